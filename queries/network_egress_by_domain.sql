-- Traffic leaving the cluster by destination domain (the address when DNS tracing saw no
-- name for it), with its class and cost; in-cluster classes are left out.
--
-- Parameters: $window_start, $window_end (timestamps, [start, end)), $provider ('aws',
-- 'gcp' or 'azure'). The CTEs come from network_classified.sql.
SELECT
  coalesce(dst_domain, dst_ip) AS destination,
  class,
  count(DISTINCT src_namespace || '/' || src_pod) AS client_pods,
  sum(tx_bytes) AS tx_bytes,
  sum(rx_bytes) AS rx_bytes,
  round(sum(cost_usd), 6) AS cost_usd
FROM priced
WHERE dst_kind = 'external'
GROUP BY 1, 2
ORDER BY cost_usd DESC, tx_bytes DESC, destination
