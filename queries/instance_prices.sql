-- The price of every instance type in force at $at: the user's rows (source 'user')
-- override the shipped catalog (source 'catalog'), newer rows override older ones.
--
-- Parameters: $at (a timestamp). Instance-type suggestions read this.
SELECT provider, region, instance_type, capacity_type, hourly_usd, cpu_cores, memory_bytes,
  gpu_count, source
FROM (
  SELECT
    *,
    row_number() OVER (
      PARTITION BY region, instance_type, capacity_type
      ORDER BY CASE source WHEN 'user' THEN 0 ELSE 1 END, time DESC
    ) AS pick
  FROM prices
  WHERE time <= $at
)
WHERE pick = 1
ORDER BY provider, region, capacity_type, hourly_usd, instance_type
