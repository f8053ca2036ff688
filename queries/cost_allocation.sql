-- Cost allocation, OpenCost's model: every container is charged, for every hour it ran,
-- max(request, usage) of CPU and of memory at its node's unit prices, plus its pod's network
-- cost; what the nodes cost beyond CPU and memory is idle. Aggregated by any set of
-- namespace, controller (or workload), controllerKind, node, pod, container and one label
-- (label:<key>), comma-separated.
--
-- Parameters:
--   $window_start, $window_end   [start, end), whole hours
--   $aggregate                   e.g. 'namespace', 'namespace,controller', 'label:team', 'node';
--                                'hour' splits every row by hour (the hour comes first in
--                                the name, as 2026-01-05T10:00:00Z/namespace)
--   $default_cpu_core_hour_usd, $default_memory_gib_hour_usd  see node_prices.sql
--   $provider                    whose network rates apply ('aws', 'gcp', 'azure'; '' for
--                                the provider of the nodes' instance types)
--
-- Usage is the hour's mean (rollup sum / samples). Requests are the workload spec's newest
-- before the window's end (a change of requests inside the window is not split). A container
-- that ran part of an hour is charged that part: its samples over its node's samples in the
-- hour. Nodes are charged for every hour they reported. Idle rows are named __idle__ (with
-- the node, and the hour, in front when aggregating by them), as OpenCost names them.
-- Network: each flow of the window is classified and priced by network_classified.sql (whose
-- CTEs come first: queries/src/network.rs assembles this query), summed per source pod and
-- shared equally by that pod's container-hours. Traffic of pods that have no usage sample in
-- the window (a pod that lived less than a sampling interval) is reported in one row,
-- __network_without_usage__, rather than dropped. Network cost is not part of a node's
-- price, so it does not change idle.
-- GPU and persistent volume costs are 0: no GPU or volume prices are stored yet; they are
-- never made up.
-- Efficiency: usage / request per resource; total efficiency weights each by its cost.
, params AS (
  SELECT
    string_to_array($aggregate, ',') AS agg,
    regexp_match($aggregate, 'label:([^,]+)')[1] AS label_key
),
billed_nodes AS (
  SELECT * FROM (
    SELECT
      node, region, instance_type, capacity_type, cpu_capacity_cores, memory_capacity_bytes,
      row_number() OVER (PARTITION BY node ORDER BY time DESC) AS newest
    FROM node_usage
    WHERE time >= $window_start AND time < $window_end
  ) WHERE newest = 1
),
node_hours AS (
  SELECT node, date_trunc('hour', time) AS hour, count(*) AS samples
  FROM node_usage
  WHERE time >= $window_start AND time < $window_end
  GROUP BY node, date_trunc('hour', time)
),
price AS (
  SELECT * FROM (
    SELECT
      region, instance_type, capacity_type, hourly_usd,
      row_number() OVER (
        PARTITION BY region, instance_type, capacity_type
        ORDER BY CASE source WHEN 'user' THEN 0 ELSE 1 END, time DESC
      ) AS pick
    FROM prices
    WHERE time < $window_end
  ) WHERE pick = 1
),
node_price AS (
  SELECT
    n.node,
    h.hourly_usd * h.cpu_weight / (h.cpu_weight + h.memory_weight) / n.cpu_capacity_cores AS cpu_core_hour_usd,
    h.hourly_usd * h.memory_weight / (h.cpu_weight + h.memory_weight)
      / (n.memory_capacity_bytes / 1073741824.0) AS memory_gib_hour_usd,
    h.hourly_usd
  FROM billed_nodes n
  JOIN (
    SELECT
      n.node,
      coalesce(p.hourly_usd,
        n.cpu_capacity_cores * $default_cpu_core_hour_usd
        + n.memory_capacity_bytes / 1073741824.0 * $default_memory_gib_hour_usd) AS hourly_usd,
      n.cpu_capacity_cores * $default_cpu_core_hour_usd AS cpu_weight,
      n.memory_capacity_bytes / 1073741824.0 * $default_memory_gib_hour_usd AS memory_weight
    FROM billed_nodes n
    LEFT JOIN price p
      ON p.region = n.region AND p.instance_type = n.instance_type
      AND p.capacity_type = n.capacity_type
  ) h ON h.node = n.node
),
spec AS (
  SELECT * FROM (
    SELECT
      namespace, kind, name, container, cpu_request_cores, memory_request_bytes, labels,
      row_number() OVER (PARTITION BY namespace, kind, name, container ORDER BY time DESC) AS newest
    FROM workloads
    WHERE time < $window_end
  ) WHERE newest = 1
),
container_hours AS (
  SELECT namespace, pod, container, node, workload_kind, workload_name, time AS hour,
    sum(samples) AS samples,
    sum(cpu_sum) / sum(samples) AS cpu_cores,
    sum(memory_sum) / sum(samples) AS memory_bytes
  FROM container_usage_hourly
  WHERE time >= $window_start AND time < $window_end
  GROUP BY namespace, pod, container, node, workload_kind, workload_name, time
),
pod_network AS (
  SELECT
    src_namespace AS namespace, src_pod AS pod,
    sum(tx_bytes) AS tx_bytes, sum(rx_bytes) AS rx_bytes, sum(cost_usd) AS cost_usd
  FROM priced
  WHERE src_pod IS NOT NULL
  GROUP BY src_namespace, src_pod
),
allocated AS (
  SELECT
    c.*,
    -- The pod's traffic, shared equally by its container-hours.
    CAST(coalesce(n.tx_bytes, 0) AS DOUBLE) / count(*) OVER (PARTITION BY c.namespace, c.pod) AS network_tx_bytes,
    CAST(coalesce(n.rx_bytes, 0) AS DOUBLE) / count(*) OVER (PARTITION BY c.namespace, c.pod) AS network_rx_bytes,
    coalesce(n.cost_usd, 0.0) / count(*) OVER (PARTITION BY c.namespace, c.pod) AS network_cost,
    least(1.0, CAST(c.samples AS DOUBLE) / coalesce(h.samples, c.samples)) AS hours,
    coalesce(s.cpu_request_cores, 0.0) AS cpu_request,
    CAST(coalesce(s.memory_request_bytes, 0) AS DOUBLE) AS memory_request,
    s.labels,
    coalesce(p.cpu_core_hour_usd, $default_cpu_core_hour_usd) AS cpu_price,
    coalesce(p.memory_gib_hour_usd, $default_memory_gib_hour_usd) AS memory_price
  FROM container_hours c
  LEFT JOIN node_hours h ON h.node = c.node AND h.hour = c.hour
  LEFT JOIN spec s
    ON s.namespace = c.namespace AND s.kind = c.workload_kind AND s.name = c.workload_name
    AND s.container = c.container
  LEFT JOIN node_price p ON p.node = c.node
  LEFT JOIN pod_network n ON n.namespace = c.namespace AND n.pod = c.pod
),
network_without_usage AS (
  SELECT n.*
  FROM pod_network n
  LEFT JOIN (SELECT DISTINCT namespace, pod FROM container_hours) c
    ON c.namespace = n.namespace AND c.pod = n.pod
  WHERE c.pod IS NULL
),
charged AS (
  SELECT
    a.*,
    a.hours * greatest(a.cpu_request, a.cpu_cores) AS cpu_core_hours,
    a.hours * greatest(a.memory_request, a.memory_bytes) AS memory_byte_hours,
    a.hours * greatest(a.cpu_request, a.cpu_cores) * a.cpu_price AS cpu_cost,
    a.hours * greatest(a.memory_request, a.memory_bytes) / 1073741824.0 * a.memory_price AS memory_cost,
    concat_ws('/',
      CASE WHEN array_has(params.agg, 'hour') THEN to_char(a.hour, '%Y-%m-%dT%H:%M:%SZ') END,
      CASE WHEN array_has(params.agg, 'cluster') THEN 'cluster' END,
      CASE WHEN array_has(params.agg, 'node') THEN a.node END,
      CASE WHEN array_has(params.agg, 'namespace') THEN a.namespace END,
      CASE WHEN array_has(params.agg, 'controllerKind') THEN a.workload_kind END,
      CASE WHEN array_has(params.agg, 'controller') OR array_has(params.agg, 'workload')
        THEN a.workload_name END,
      CASE WHEN array_has(params.agg, 'pod') THEN a.pod END,
      CASE WHEN array_has(params.agg, 'container') THEN a.container END,
      CASE WHEN params.label_key IS NOT NULL THEN coalesce(
        regexp_match(a.labels, concat('"', params.label_key, '":"([^"]*)"'))[1],
        '__unallocated__') END
    ) AS name
  FROM allocated a
  CROSS JOIN params
),
-- Idle per node and hour: what the node cost that hour minus what its containers were
-- charged (summed over the window this is the node's cost minus its allocations).
node_hour_cost AS (
  SELECT h.node, h.hour, p.hourly_usd
  FROM node_hours h
  JOIN node_price p ON p.node = h.node
),
node_hour_allocated AS (
  SELECT node, hour, sum(cpu_cost + memory_cost) AS allocated_usd
  FROM charged
  GROUP BY node, hour
),
idle AS (
  SELECT
    concat_ws('/',
      CASE WHEN array_has(params.agg, 'hour')
        THEN to_char(coalesce(c.hour, a.hour), '%Y-%m-%dT%H:%M:%SZ') END,
      CASE WHEN array_has(params.agg, 'node') THEN coalesce(c.node, a.node) END,
      '__idle__'
    ) AS name,
    coalesce(c.hourly_usd, 0.0) - coalesce(a.allocated_usd, 0.0) AS idle_usd
  FROM node_hour_cost c
  FULL OUTER JOIN node_hour_allocated a ON a.node = c.node AND a.hour = c.hour
  CROSS JOIN params
)
SELECT
  name,
  sum(cpu_core_hours) / ((to_unixtime($window_end) - to_unixtime($window_start)) / 3600.0) AS cpu_cores,
  sum(hours * cpu_request) AS cpu_core_request_hours,
  sum(hours * cpu_cores) AS cpu_core_usage_hours,
  sum(cpu_core_hours) AS cpu_core_hours,
  sum(cpu_cost) AS cpu_cost_usd,
  sum(hours * memory_request) AS ram_byte_request_hours,
  sum(hours * memory_bytes) AS ram_byte_usage_hours,
  sum(memory_byte_hours) AS ram_byte_hours,
  sum(memory_cost) AS ram_cost_usd,
  0.0 AS gpu_cost_usd,
  0.0 AS pv_cost_usd,
  sum(network_cost) AS network_cost_usd,
  sum(network_tx_bytes) AS network_transfer_bytes,
  sum(network_rx_bytes) AS network_receive_bytes,
  sum(cpu_cost + memory_cost + network_cost) AS total_cost_usd,
  CASE WHEN sum(hours * cpu_request) > 0
    THEN sum(hours * cpu_cores) / sum(hours * cpu_request) END AS cpu_efficiency,
  CASE WHEN sum(hours * memory_request) > 0
    THEN sum(hours * memory_bytes) / sum(hours * memory_request) END AS ram_efficiency,
  -- Weighted by cost over the resources that have requests (none: NULL).
  (
    CASE WHEN sum(hours * cpu_request) > 0
      THEN sum(hours * cpu_cores) / sum(hours * cpu_request) * sum(cpu_cost) ELSE 0.0 END
    + CASE WHEN sum(hours * memory_request) > 0
      THEN sum(hours * memory_bytes) / sum(hours * memory_request) * sum(memory_cost) ELSE 0.0 END
  ) / nullif(
    CASE WHEN sum(hours * cpu_request) > 0 THEN sum(cpu_cost) ELSE 0.0 END
    + CASE WHEN sum(hours * memory_request) > 0 THEN sum(memory_cost) ELSE 0.0 END,
    0.0
  ) AS total_efficiency,
  min(hour) AS first_hour,
  max(hour) AS last_hour
FROM charged
GROUP BY name
UNION ALL
SELECT
  name,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  0.0, 0.0, 0.0, NULL, NULL,
  sum(idle_usd),
  NULL, NULL, NULL,
  NULL, NULL
FROM idle
GROUP BY name
UNION ALL
SELECT
  '__network_without_usage__',
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  0.0, 0.0, sum(cost_usd), sum(tx_bytes), sum(rx_bytes),
  sum(cost_usd),
  NULL, NULL, NULL,
  NULL, NULL
FROM network_without_usage
HAVING count(*) > 0
ORDER BY name
