-- The whole cluster hour by hour: CPU and memory in use (each node's mean over the hour,
-- summed over the nodes) against what the nodes can allocate, and how many nodes reported.
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
WITH per_node AS (
  SELECT
    date_trunc('hour', time) AS hour,
    node,
    avg(cpu_cores) AS cpu_cores,
    avg(cpu_allocatable_cores) AS cpu_allocatable_cores,
    avg(memory_working_set_bytes) AS memory_bytes,
    avg(memory_allocatable_bytes) AS memory_allocatable_bytes
  FROM node_usage
  WHERE time >= $window_start AND time < $window_end
  GROUP BY date_trunc('hour', time), node
)
SELECT
  hour AS time,
  count(*) AS nodes,
  sum(cpu_cores) AS cpu_used_cores,
  sum(cpu_allocatable_cores) AS cpu_allocatable_cores,
  CAST(sum(memory_bytes) AS BIGINT) AS memory_used_bytes,
  CAST(sum(memory_allocatable_bytes) AS BIGINT) AS memory_allocatable_bytes
FROM per_node
GROUP BY hour
ORDER BY hour
