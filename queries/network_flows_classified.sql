-- Every flow of the window with its source workload, resolved destination, traffic class,
-- the rule that chose the class, and its cost at $provider's rates.
--
-- Parameters: $window_start, $window_end (timestamps, [start, end)), $provider ('aws',
-- 'gcp' or 'azure'). The CTEs come from network_classified.sql.
SELECT
  src_namespace, src_pod, src_workload_kind, src_workload_name,
  dst_ip, dst_port, protocol, dst_domain, dst_kind, dst_namespace, dst_pod, dst_node,
  class, rule, tx_bytes, rx_bytes, tx_packets, rx_packets, round(cost_usd, 6) AS cost_usd
FROM priced
ORDER BY cost_usd DESC, tx_bytes + rx_bytes DESC, src_namespace, src_pod, dst_ip, dst_port
