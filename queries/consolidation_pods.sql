-- The pods running now, with what the scheduler needs to place them elsewhere: the input of
-- node consolidation (which simulates the rescheduling in Rust: bin-packing is not SQL's job).
--
-- Parameters: $window_start, $window_end (a pod's newest row in [start, end) describes it;
-- pods whose newest row says deleted, Succeeded or Failed are gone).
--
-- requests: the pod's effective requests from the pods table, or the sum of its workload's
-- container requests when the collector did not send them. pdb_max_unavailable: the
-- workload's PodDisruptionBudget (NULL without one). scheduling: the JSON object of node
-- selector, tolerations, required node affinity and local storage (see the pods table).
WITH pods_now AS (
  SELECT * FROM (
    SELECT
      namespace, name, node, phase, workload_kind, workload_name, deleted,
      cpu_request_cores, memory_request_bytes, scheduling,
      row_number() OVER (PARTITION BY namespace, name ORDER BY time DESC) AS newest
    FROM pods
    WHERE time >= $window_start AND time < $window_end
  ) WHERE newest = 1 AND NOT deleted AND phase IN ('Running', 'Pending')
),
spec AS (
  SELECT * FROM (
    SELECT
      namespace, kind, name, container, cpu_request_cores, memory_request_bytes,
      pdb_max_unavailable, deleted,
      row_number() OVER (PARTITION BY namespace, kind, name, container ORDER BY time DESC) AS newest
    FROM workloads
    WHERE time < $window_end
  ) WHERE newest = 1 AND NOT deleted
),
workload AS (
  SELECT
    namespace, kind, name,
    sum(coalesce(cpu_request_cores, 0.0)) AS cpu_request_cores,
    sum(coalesce(memory_request_bytes, 0)) AS memory_request_bytes,
    min(pdb_max_unavailable) AS pdb_max_unavailable
  FROM spec
  GROUP BY namespace, kind, name
)
SELECT
  p.namespace,
  p.name AS pod,
  p.node,
  p.workload_kind,
  p.workload_name,
  coalesce(p.cpu_request_cores, w.cpu_request_cores, 0.0) AS cpu_request_cores,
  coalesce(p.memory_request_bytes, w.memory_request_bytes, 0) AS memory_request_bytes,
  w.pdb_max_unavailable,
  p.scheduling
FROM pods_now p
LEFT JOIN workload w
  ON w.namespace = p.namespace AND w.kind = p.workload_kind AND w.name = p.workload_name
ORDER BY p.node, p.namespace, p.name
