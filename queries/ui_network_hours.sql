-- How many hours of the window have measured traffic: the network page scales the window's
-- costs to a month from these, not from the whole window (a cluster whose agents started
-- two days ago is not billed as if the other days had no traffic).
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
SELECT count(DISTINCT date_trunc('hour', time)) AS hours
FROM network_flows
WHERE time >= $window_start AND time < $window_end
