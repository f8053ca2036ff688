-- The usage of one workload's containers hour by hour, merged over its pods, from the hourly
-- rollups: mean, p50, p95 and p99 CPU (cores; percentiles are the end of the 5 % bucket
-- holding them) and peak memory working set (bytes).
--
-- Parameters: $namespace, $kind, $name (the workload), $window_start, $window_end
-- (timestamps; the window is [start, end)).
SELECT
  container,
  time,
  sum(cpu_sum) / sum(samples) AS cpu_mean_cores,
  cpu_quantile(cpu_histogram, 0.5) AS cpu_p50_cores,
  cpu_quantile(cpu_histogram, 0.95) AS cpu_p95_cores,
  cpu_quantile(cpu_histogram, 0.99) AS cpu_p99_cores,
  max(memory_max) AS memory_max_bytes
FROM container_usage_hourly
WHERE namespace = $namespace AND workload_kind = $kind AND workload_name = $name
  AND time >= $window_start AND time < $window_end
GROUP BY container, time
ORDER BY container, time
