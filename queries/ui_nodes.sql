-- One row per node seen in the window: where it is and what it is (from its newest sample),
-- its allocatable CPU and memory, its mean and peak usage over the window, and what the pods
-- running on it now request (the newest snapshot of each pod, deleted and finished pods left
-- out).
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
WITH samples AS (
  SELECT
    node,
    last_value(node_group ORDER BY time) AS node_group,
    last_value(zone ORDER BY time) AS zone,
    last_value(instance_type ORDER BY time) AS instance_type,
    last_value(capacity_type ORDER BY time) AS capacity_type,
    last_value(cpu_allocatable_cores ORDER BY time) AS cpu_allocatable_cores,
    last_value(memory_allocatable_bytes ORDER BY time) AS memory_allocatable_bytes,
    avg(cpu_cores) AS cpu_mean_cores,
    max(cpu_cores) AS cpu_max_cores,
    CAST(avg(memory_working_set_bytes) AS BIGINT) AS memory_mean_bytes,
    max(memory_working_set_bytes) AS memory_max_bytes
  FROM node_usage
  WHERE time >= $window_start AND time < $window_end
  GROUP BY node
),
pod_snapshots AS (
  SELECT
    node, phase, deleted, cpu_request_cores, memory_request_bytes,
    row_number() OVER (PARTITION BY namespace, name ORDER BY time DESC) AS newest
  FROM pods
  WHERE time < $window_end
),
requested AS (
  SELECT
    node,
    count(*) AS pods,
    sum(cpu_request_cores) AS cpu_request_cores,
    sum(memory_request_bytes) AS memory_request_bytes
  FROM pod_snapshots
  WHERE newest = 1 AND NOT deleted AND phase IN ('Running', 'Pending')
  GROUP BY node
)
SELECT
  s.node, s.node_group, s.zone, s.instance_type, s.capacity_type,
  s.cpu_allocatable_cores, s.memory_allocatable_bytes,
  coalesce(r.pods, 0) AS pods,
  coalesce(r.cpu_request_cores, 0.0) AS cpu_request_cores,
  coalesce(r.memory_request_bytes, 0) AS memory_request_bytes,
  s.cpu_mean_cores, s.cpu_max_cores, s.memory_mean_bytes, s.memory_max_bytes
FROM samples s
LEFT JOIN requested r ON r.node = s.node
ORDER BY s.node_group, s.node
