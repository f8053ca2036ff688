-- Traffic by destination over the window, largest first (at most 50): the domain the
-- destination was looked up as when known, else its IP, with port and protocol.
-- Not yet classified (same-zone, cross-zone, egress, …): classification arrives with network
-- monitoring's queries.
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
SELECT
  coalesce(dst_domain, dst_ip) AS destination,
  dst_port,
  protocol,
  count(DISTINCT src_ip) AS sources,
  sum(tx_bytes) AS tx_bytes,
  sum(rx_bytes) AS rx_bytes,
  sum(tx_bytes) + sum(rx_bytes) AS total_bytes
FROM network_flows
WHERE time >= $window_start AND time < $window_end
GROUP BY coalesce(dst_domain, dst_ip), dst_port, protocol
ORDER BY total_bytes DESC, destination, dst_port
LIMIT 50
