-- The shared first half of every network view (not a query by itself): the flows of the
-- window [$window_start, $window_end), each with its source workload, its destination
-- resolved and classified, and its cost at $provider's rates ('' for the provider the
-- nodes' instance types belong to, see cluster_provider below). queries/src/network.rs puts
-- `WITH class_rules AS (network_class_rules.sql), rates AS (network_rates.sql),` before it
-- and the view's own SELECT after it.
--
-- Resolution, in order: the destination address is a pod's (the newest snapshot of a pod
-- holding it; an address several live pods share is their node's, since only hostNetwork
-- pods share one) → in-cluster, classified by the source and destination nodes' zone and
-- region; otherwise the first matching rule of class_rules (by domain, then address);
-- otherwise internet_egress. A destination named by a Service's DNS name (*.svc.cluster.local,
-- a ClusterIP the agent saw before kube-proxy's DNAT) is a `service` in the cluster, class
-- in_cluster: which endpoint, and so which zone, answered is not known from the flow.
flows AS (
  SELECT
    node, src_ip, dst_ip, dst_port, protocol, src_namespace, src_pod,
    max(dst_domain) AS dst_domain,
    sum(tx_bytes) AS tx_bytes, sum(rx_bytes) AS rx_bytes,
    sum(tx_packets) AS tx_packets, sum(rx_packets) AS rx_packets
  FROM network_flows
  WHERE time >= $window_start AND time < $window_end
  GROUP BY node, src_ip, dst_ip, dst_port, protocol, src_namespace, src_pod
),
newest_pods AS (
  SELECT
    namespace, name,
    first_value(node ORDER BY time DESC) AS node,
    first_value(ip ORDER BY time DESC) AS ip,
    first_value(workload_kind ORDER BY time DESC) AS workload_kind,
    first_value(workload_name ORDER BY time DESC) AS workload_name,
    first_value(deleted ORDER BY time DESC) AS deleted,
    max(time) AS seen
  FROM pods
  WHERE time < $window_end
  GROUP BY namespace, name
),
pods_by_ip AS (
  SELECT
    ip,
    sum(CASE WHEN deleted THEN 0 ELSE 1 END) AS live_holders,
    first_value(namespace ORDER BY deleted, seen DESC) AS namespace,
    first_value(name ORDER BY deleted, seen DESC) AS name,
    first_value(node ORDER BY deleted, seen DESC) AS node,
    first_value(workload_kind ORDER BY deleted, seen DESC) AS workload_kind,
    first_value(workload_name ORDER BY deleted, seen DESC) AS workload_name
  FROM newest_pods
  WHERE ip IS NOT NULL
  GROUP BY ip
),
nodes AS (
  SELECT
    node,
    first_value(zone ORDER BY time DESC) AS zone,
    first_value(region ORDER BY time DESC) AS region,
    first_value(instance_type ORDER BY time DESC) AS instance_type
  FROM node_usage
  WHERE time < $window_end
  GROUP BY node
),
-- The cloud whose rates apply: $provider, or when it is '' the provider whose price catalog
-- holds the instance types (in their regions) of the most nodes. A cluster none of whose
-- nodes is in the catalog has no provider: its traffic is classified but costs 0.
cluster_provider AS (
  SELECT provider FROM (
    SELECT $provider AS provider WHERE $provider <> ''
    UNION ALL
    SELECT provider FROM (
      SELECT p.provider
      FROM nodes n
      JOIN (SELECT DISTINCT provider, region, instance_type FROM prices) p
        ON p.region = n.region AND p.instance_type = n.instance_type
      WHERE $provider = ''
      GROUP BY p.provider
      ORDER BY count(*) DESC, p.provider
      LIMIT 1
    )
  )
),
cluster_rates AS (
  SELECT r.* FROM rates r JOIN cluster_provider c ON c.provider = r.provider
),
destinations AS (
  SELECT DISTINCT dst_ip, dst_domain FROM flows
),
rule_matches AS (
  SELECT
    d.dst_ip, d.dst_domain,
    first_value(r.class ORDER BY r.priority) AS class,
    first_value(r.rule ORDER BY r.priority) AS rule
  FROM destinations d
  JOIN class_rules r
    ON (r.match_on = 'domain' AND d.dst_domain LIKE r.pattern)
    OR (r.match_on = 'ip' AND regexp_like(d.dst_ip, r.pattern))
  GROUP BY d.dst_ip, d.dst_domain
),
classified AS (
  SELECT
    f.*,
    sp.workload_kind AS src_workload_kind,
    sp.workload_name AS src_workload_name,
    CASE
      WHEN dp.ip IS NULL AND m.rule = 'k8s_service' THEN 'service'
      WHEN dp.ip IS NULL THEN 'external'
      WHEN dp.live_holders > 1 THEN 'node'
      ELSE 'pod'
    END AS dst_kind,
    CASE WHEN dp.live_holders <= 1 THEN dp.namespace END AS dst_namespace,
    CASE WHEN dp.live_holders <= 1 THEN dp.name END AS dst_pod,
    CASE WHEN dp.live_holders <= 1 THEN dp.workload_kind END AS dst_workload_kind,
    CASE WHEN dp.live_holders <= 1 THEN dp.workload_name END AS dst_workload_name,
    dp.node AS dst_node,
    CASE
      WHEN dp.ip IS NULL THEN coalesce(m.class, 'internet_egress')
      WHEN dp.node = f.node THEN 'same_zone'
      WHEN sn.region IS NULL OR dn.region IS NULL OR sn.zone IS NULL OR dn.zone IS NULL THEN 'in_cluster'
      WHEN sn.region <> dn.region THEN 'cross_region'
      WHEN sn.zone <> dn.zone THEN 'cross_zone'
      ELSE 'same_zone'
    END AS class,
    CASE WHEN dp.ip IS NULL THEN coalesce(m.rule, 'public_address') ELSE 'cluster' END AS rule
  FROM flows f
  LEFT JOIN newest_pods sp ON sp.namespace = f.src_namespace AND sp.name = f.src_pod
  LEFT JOIN pods_by_ip dp ON dp.ip = f.dst_ip
  LEFT JOIN nodes sn ON sn.node = f.node
  LEFT JOIN nodes dn ON dn.node = dp.node
  LEFT JOIN rule_matches m ON m.dst_ip = f.dst_ip AND m.dst_domain IS NOT DISTINCT FROM f.dst_domain
),
priced AS (
  SELECT
    c.*,
    c.tx_bytes / 1073741824.0 * coalesce(r.usd_per_gib_tx, 0.0)
      + c.rx_bytes / 1073741824.0 * coalesce(r.usd_per_gib_rx, 0.0) AS cost_usd
  FROM classified c
  LEFT JOIN cluster_rates r ON r.class = c.class
)
