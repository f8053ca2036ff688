-- The usage of one workload's containers over the whole window, merged over its pods, from
-- the hourly rollups: p50, p95 and p99 CPU (cores) and memory working set (bytes), and the
-- peaks. Percentiles are the end of the 5 % log bucket that holds them.
--
-- Parameters: $namespace, $kind, $name (the workload), $window_start, $window_end
-- (timestamps; the window is [start, end)).
SELECT
  container,
  sum(samples) AS samples,
  cpu_quantile(cpu_histogram, 0.5) AS cpu_p50_cores,
  cpu_quantile(cpu_histogram, 0.95) AS cpu_p95_cores,
  cpu_quantile(cpu_histogram, 0.99) AS cpu_p99_cores,
  max(cpu_max) AS cpu_max_cores,
  memory_quantile(memory_histogram, 0.5) AS memory_p50_bytes,
  memory_quantile(memory_histogram, 0.95) AS memory_p95_bytes,
  memory_quantile(memory_histogram, 0.99) AS memory_p99_bytes,
  max(memory_max) AS memory_max_bytes
FROM container_usage_hourly
WHERE namespace = $namespace AND workload_kind = $kind AND workload_name = $name
  AND time >= $window_start AND time < $window_end
GROUP BY container
ORDER BY container
