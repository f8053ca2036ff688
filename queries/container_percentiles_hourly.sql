-- CPU and memory percentiles of every container over a window, read from the hourly rollups.
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
--
-- cpu_quantile/memory_quantile merge the 5 % log-bucket histograms of every hour in the
-- window and answer the end of the bucket that holds the quantile: never below the exact
-- nearest-rank percentile, at most one bucket (5 %) above it (an interpolating percentile,
-- such as DuckDB's quantile_cont, can be higher for containers with few samples). Maxima are exact. A 14-day window reads
-- 14 × 24 rows per container instead of 40,320 raw samples.
SELECT
  namespace,
  workload_kind,
  workload_name,
  pod,
  container,
  sum(samples) AS samples,
  cpu_quantile(cpu_histogram, 0.5) AS cpu_p50_cores,
  cpu_quantile(cpu_histogram, 0.95) AS cpu_p95_cores,
  cpu_quantile(cpu_histogram, 0.99) AS cpu_p99_cores,
  max(cpu_max) AS cpu_max_cores,
  memory_quantile(memory_histogram, 0.95) AS memory_p95_bytes,
  max(memory_max) AS memory_max_bytes
FROM container_usage_hourly
WHERE time >= $window_start AND time < $window_end
GROUP BY namespace, workload_kind, workload_name, pod, container
ORDER BY namespace, pod, container
