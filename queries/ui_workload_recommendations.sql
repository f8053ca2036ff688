-- Every recommendation Tally made for one workload, newest first (at most 100): the history
-- of what was set, what was recommended, why, and what it would save per month.
--
-- Parameters: $namespace, $kind, $name (the workload).
SELECT
  time, run_id, kind, container,
  current_cpu_request_cores, recommended_cpu_request_cores,
  current_memory_request_bytes, recommended_memory_request_bytes,
  current_memory_limit_bytes, recommended_memory_limit_bytes,
  current_replicas, recommended_replicas,
  confidence, why, savings_monthly_usd
FROM recommendations
WHERE namespace = $namespace AND target_kind = $kind AND target_name = $name
ORDER BY time DESC, kind, container
LIMIT 100
