-- Example for the SQL console: bytes sent to each looked-up domain, largest first.
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
SELECT
  dst_domain,
  sum(tx_bytes) AS tx_bytes,
  sum(rx_bytes) AS rx_bytes
FROM network_flows
WHERE dst_domain IS NOT NULL AND time >= $window_start AND time < $window_end
GROUP BY dst_domain
ORDER BY tx_bytes DESC, dst_domain
LIMIT 20
