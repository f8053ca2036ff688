-- The spec of one workload now: the newest `workloads` snapshot of each of its containers
-- before the window's end (requests, limits, replicas, HPA bounds, PDB).
--
-- Parameters: $namespace, $kind, $name (the workload), $window_end (timestamp).
WITH spec AS (
  SELECT
    *,
    row_number() OVER (PARTITION BY container ORDER BY time DESC) AS newest
  FROM workloads
  WHERE namespace = $namespace AND kind = $kind AND name = $name AND time < $window_end
)
SELECT
  container, time AS since, replicas, cpu_request_cores, cpu_limit_cores,
  memory_request_bytes, memory_limit_bytes, hpa_min_replicas, hpa_max_replicas,
  hpa_target_cpu_utilization, pdb_max_unavailable, deleted
FROM spec
WHERE newest = 1
ORDER BY container
