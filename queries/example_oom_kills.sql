-- Example for the SQL console: which workloads were OOM-killed, how often, and at what
-- memory limit.
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
SELECT
  namespace,
  workload_kind,
  workload_name,
  count(*) AS oom_kills,
  max(memory_limit_bytes) AS memory_limit_bytes,
  max(time) AS last_kill
FROM events
WHERE reason = 'OOMKilled' AND time >= $window_start AND time < $window_end
GROUP BY namespace, workload_kind, workload_name
ORDER BY oom_kills DESC, namespace, workload_name
