-- What the newest analysis run recommends, each with its status from the audit log: the
-- `result` of the newest action on the same target, else `pending`. Largest savings first.
--
-- No parameters: the newest run is the one whose rows are newest.
WITH newest_run AS (
  SELECT last_value(run_id ORDER BY time) AS run_id FROM recommendations
),
acted AS (
  SELECT namespace, target_kind, target_name,
         last_value(result ORDER BY time) AS result,
         max(time) AS acted_at
  FROM actions
  GROUP BY namespace, target_kind, target_name
)
SELECT
  r.time, r.run_id, r.kind, r.namespace, r.target_kind, r.target_name, r.container,
  r.current_cpu_request_cores, r.recommended_cpu_request_cores,
  r.current_memory_request_bytes, r.recommended_memory_request_bytes,
  r.current_replicas, r.recommended_replicas,
  r.confidence, r.why, r.savings_monthly_usd,
  coalesce(a.result, 'pending') AS status
FROM recommendations r
LEFT JOIN acted a
  ON a.namespace = r.namespace AND a.target_kind = r.target_kind AND a.target_name = r.target_name
WHERE r.run_id = (SELECT run_id FROM newest_run)
ORDER BY r.savings_monthly_usd DESC NULLS LAST, r.namespace, r.target_name, r.container
