-- Bytes and cost by traffic class over the window.
--
-- Parameters: $window_start, $window_end (timestamps, [start, end)), $provider ('aws',
-- 'gcp' or 'azure'). The CTEs come from network_classified.sql.
SELECT
  class,
  count(*) AS flows,
  sum(tx_bytes) AS tx_bytes,
  sum(rx_bytes) AS rx_bytes,
  round(sum(cost_usd), 6) AS cost_usd
FROM priced
GROUP BY class
ORDER BY cost_usd DESC, class
