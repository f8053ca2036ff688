-- Bytes and cost from each workload to each destination workload (or, outside the cluster,
-- to each domain or address), with the traffic class.
--
-- Parameters: $window_start, $window_end (timestamps, [start, end)), $provider ('aws',
-- 'gcp' or 'azure'). The CTEs come from network_classified.sql.
SELECT
  src_namespace,
  coalesce(src_workload_name, src_pod) AS src_workload,
  CASE dst_kind WHEN 'pod' THEN dst_namespace END AS dst_namespace,
  CASE dst_kind
    WHEN 'pod' THEN coalesce(dst_workload_name, dst_pod)
    WHEN 'node' THEN 'node/' || dst_node
    ELSE coalesce(dst_domain, dst_ip)
  END AS dst_workload,
  class,
  sum(tx_bytes) AS tx_bytes,
  sum(rx_bytes) AS rx_bytes,
  round(sum(cost_usd), 6) AS cost_usd
FROM priced
GROUP BY 1, 2, 3, 4, 5
ORDER BY cost_usd DESC, tx_bytes + rx_bytes DESC, 1, 2, 4
