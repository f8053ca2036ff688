-- The pods that sent and received the most over the window (at most 20), by source
-- namespace and pod as the node agent saw them.
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
SELECT
  coalesce(src_namespace, '(host)') AS namespace,
  coalesce(src_pod, src_ip) AS pod,
  count(DISTINCT dst_ip) AS destinations,
  sum(tx_bytes) AS tx_bytes,
  sum(rx_bytes) AS rx_bytes,
  sum(tx_bytes) + sum(rx_bytes) AS total_bytes
FROM network_flows
WHERE time >= $window_start AND time < $window_end
GROUP BY coalesce(src_namespace, '(host)'), coalesce(src_pod, src_ip)
ORDER BY total_bytes DESC, namespace, pod
LIMIT 20
