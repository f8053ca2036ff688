-- CPU and memory percentiles of every container over a window, read from raw samples.
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
--
-- The same answer as container_percentiles_hourly.sql computed the expensive way, for
-- checking it and for windows shorter than an hour. Percentiles interpolate between samples
-- (t-digest, approx_percentile_cont), so memory stays bounded over any window.
SELECT
  namespace,
  workload_kind,
  workload_name,
  pod,
  container,
  count(*) AS samples,
  approx_percentile_cont(cpu_cores, 0.5) AS cpu_p50_cores,
  approx_percentile_cont(cpu_cores, 0.95) AS cpu_p95_cores,
  approx_percentile_cont(cpu_cores, 0.99) AS cpu_p99_cores,
  max(cpu_cores) AS cpu_max_cores,
  approx_percentile_cont(memory_working_set_bytes, 0.95) AS memory_p95_bytes,
  max(memory_working_set_bytes) AS memory_max_bytes
FROM container_usage
WHERE time >= $window_start AND time < $window_end
GROUP BY namespace, workload_kind, workload_name, pod, container
ORDER BY namespace, pod, container
