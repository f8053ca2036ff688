-- Bytes sent and received over the window by source namespace and destination domain, every
-- flow counted (in-cluster and external, unpriced): the raw traffic matrix the network views
-- classify. Host traffic has no source namespace and a destination no DNS lookup named has
-- no domain; each null is a group of its own.
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
SELECT
  src_namespace,
  dst_domain,
  count(*) AS samples,
  sum(tx_bytes) AS tx_bytes,
  sum(rx_bytes) AS rx_bytes
FROM network_flows
WHERE time >= $window_start AND time < $window_end
GROUP BY src_namespace, dst_domain
ORDER BY tx_bytes DESC, src_namespace, dst_domain
