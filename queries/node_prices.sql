-- What each node costs and its unit prices, OpenCost's way.
--
-- Parameters: $window_start, $window_end (the nodes seen in [start, end), described by their
-- newest row); $default_cpu_core_hour_usd, $default_memory_gib_hour_usd (the stated default
-- unit prices: OpenCost's defaults are 0.031611 per core-hour and 0.004237 per GiB-hour).
--
-- A node's hourly price is the price of its instance type in its region and capacity type
-- (on_demand or spot) from the prices table: the user's rows (source 'user') override the
-- shipped catalog (source 'catalog'), newer rows override older ones. The price is split into
-- a CPU and a memory unit price in the proportion of the default unit prices (as OpenCost
-- does). A node whose type has no price is priced at the defaults (price_source 'default').
WITH nodes AS (
  SELECT * FROM (
    SELECT
      node, node_group, zone, region, instance_type, capacity_type,
      cpu_capacity_cores, memory_capacity_bytes, cpu_allocatable_cores, memory_allocatable_bytes,
      labels, taints,
      row_number() OVER (PARTITION BY node ORDER BY time DESC) AS newest
    FROM node_usage
    WHERE time >= $window_start AND time < $window_end
  ) WHERE newest = 1
),
price AS (
  SELECT * FROM (
    SELECT
      region, instance_type, capacity_type, hourly_usd, source,
      row_number() OVER (
        PARTITION BY region, instance_type, capacity_type
        ORDER BY CASE source WHEN 'user' THEN 0 ELSE 1 END, time DESC
      ) AS pick
    FROM prices
    WHERE time < $window_end
  ) WHERE pick = 1
),
priced AS (
  SELECT
    n.*,
    coalesce(p.hourly_usd,
      n.cpu_capacity_cores * $default_cpu_core_hour_usd
      + n.memory_capacity_bytes / 1073741824.0 * $default_memory_gib_hour_usd) AS hourly_usd,
    coalesce(p.source, 'default') AS price_source,
    n.cpu_capacity_cores * $default_cpu_core_hour_usd AS cpu_weight,
    n.memory_capacity_bytes / 1073741824.0 * $default_memory_gib_hour_usd AS memory_weight
  FROM nodes n
  LEFT JOIN price p
    ON p.region = n.region AND p.instance_type = n.instance_type
    AND p.capacity_type = n.capacity_type
)
SELECT
  node,
  node_group,
  zone,
  region,
  instance_type,
  capacity_type,
  cpu_capacity_cores,
  memory_capacity_bytes,
  cpu_allocatable_cores,
  memory_allocatable_bytes,
  labels,
  taints,
  hourly_usd,
  price_source,
  hourly_usd * cpu_weight / (cpu_weight + memory_weight) / cpu_capacity_cores AS cpu_core_hour_usd,
  hourly_usd * memory_weight / (cpu_weight + memory_weight)
    / (memory_capacity_bytes / 1073741824.0) AS memory_gib_hour_usd
FROM priced
ORDER BY node
