-- What happened to one workload's pods in the window: OOM kills, restarts, evictions, …,
-- newest first (at most 200).
--
-- Parameters: $namespace, $kind, $name (the workload), $window_start, $window_end
-- (timestamps; the window is [start, end)).
SELECT time, pod, container, reason, message, memory_limit_bytes, restart_count
FROM events
WHERE namespace = $namespace AND workload_kind = $kind AND workload_name = $name
  AND time >= $window_start AND time < $window_end
ORDER BY time DESC, pod, container
LIMIT 200
