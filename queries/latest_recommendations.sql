-- The recommendations of one analysis run: the newest run when $run_id is '', and of every
-- kind when $kind is ''. Largest savings first.
--
-- Parameters: $run_id, $kind (rightsizing, replicas, hpa, consolidation, instance_type).
WITH chosen AS (
  SELECT CASE WHEN $run_id = ''
    THEN (SELECT max(run_id) FROM recommendations WHERE time = (SELECT max(time) FROM recommendations))
    ELSE $run_id END AS run_id
)
SELECT r.*
FROM recommendations r
JOIN chosen c ON r.run_id = c.run_id
WHERE $kind = '' OR r.kind = $kind
ORDER BY r.savings_monthly_usd DESC NULLS LAST, r.kind, r.namespace, r.target_kind, r.target_name, r.container
