-- The price in force for each instance type: the newest row per provider, region, type and
-- capacity type, a user's override (source `user`) winning over the shipped catalog at the
-- same time.
--
-- No parameters.
WITH ranked AS (
  SELECT
    *,
    row_number() OVER (
      PARTITION BY provider, region, instance_type, capacity_type
      ORDER BY time DESC, CASE WHEN source = 'user' THEN 0 ELSE 1 END
    ) AS newest
  FROM prices
)
SELECT
  provider, region, instance_type, capacity_type, hourly_usd, cpu_cores, memory_bytes,
  gpu_count, source, time AS since
FROM ranked
WHERE newest = 1
ORDER BY provider, region, instance_type, capacity_type
