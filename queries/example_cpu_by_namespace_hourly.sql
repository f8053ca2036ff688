-- Example for the SQL console: CPU used per namespace, hour by hour (a time series, so the
-- console charts it). Reads the hourly rollups: mean cores = sum of samples / sample count.
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
SELECT
  time,
  namespace,
  sum(cpu_sum / samples) AS cpu_cores
FROM container_usage_hourly
WHERE time >= $window_start AND time < $window_end
GROUP BY time, namespace
ORDER BY time, namespace
