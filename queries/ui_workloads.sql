-- One row per workload for the workloads table: its spec now, its usage over the window, its
-- OOM kills, and what the newest analysis run recommends for it.
--
-- Parameters: $window_start, $window_end (timestamps; the window is [start, end)).
--
-- Spec: the newest `workloads` snapshot of each container before the window's end; workloads
-- whose newest snapshot is deleted are left out. Requests and usage are per replica: the sum
-- over the pod's containers. Usage: the p95 CPU of each container over the window, merged
-- over every pod of the workload from the hourly rollups (the end of the 5 % bucket holding
-- the p95), and the peak memory working set. Savings: the newest run's recommendations for
-- the workload, summed. Status: the newest audit-log entry for the workload (its `result`),
-- else `pending` when the newest run recommends something, else `none`.
WITH spec AS (
  SELECT
    namespace, kind, name, container, replicas, cpu_request_cores, memory_request_bytes,
    hpa_min_replicas, hpa_max_replicas, deleted,
    row_number() OVER (PARTITION BY namespace, kind, name, container ORDER BY time DESC) AS newest
  FROM workloads
  WHERE time < $window_end
),
usage AS (
  SELECT
    namespace, workload_kind AS kind, workload_name AS name, container,
    cpu_quantile(cpu_histogram, 0.95) AS cpu_p95_cores,
    max(memory_max) AS memory_max_bytes
  FROM container_usage_hourly
  WHERE time >= $window_start AND time < $window_end
  GROUP BY namespace, workload_kind, workload_name, container
),
per_workload AS (
  SELECT
    s.namespace, s.kind, s.name,
    max(s.replicas) AS replicas,
    max(s.hpa_min_replicas) AS hpa_min_replicas,
    max(s.hpa_max_replicas) AS hpa_max_replicas,
    count(*) AS containers,
    sum(s.cpu_request_cores) AS cpu_request_cores,
    sum(u.cpu_p95_cores) AS cpu_p95_cores,
    sum(s.memory_request_bytes) AS memory_request_bytes,
    sum(u.memory_max_bytes) AS memory_max_bytes
  FROM spec s
  LEFT JOIN usage u
    ON u.namespace = s.namespace AND u.kind = s.kind AND u.name = s.name AND u.container = s.container
  WHERE s.newest = 1 AND NOT s.deleted
  GROUP BY s.namespace, s.kind, s.name
),
ooms AS (
  SELECT namespace, workload_kind AS kind, workload_name AS name, count(*) AS oom_kills
  FROM events
  WHERE reason = 'OOMKilled' AND time >= $window_start AND time < $window_end
  GROUP BY namespace, workload_kind, workload_name
),
newest_run AS (
  SELECT last_value(run_id ORDER BY time) AS run_id FROM recommendations WHERE time < $window_end
),
recommended AS (
  SELECT namespace, target_kind AS kind, target_name AS name,
         sum(savings_monthly_usd) AS savings_monthly_usd, count(*) AS recommendations
  FROM recommendations
  WHERE run_id = (SELECT run_id FROM newest_run)
  GROUP BY namespace, target_kind, target_name
),
acted AS (
  SELECT namespace, target_kind AS kind, target_name AS name,
         last_value(result ORDER BY time) AS result
  FROM actions
  WHERE time < $window_end
  GROUP BY namespace, target_kind, target_name
)
SELECT
  w.namespace, w.kind, w.name, w.replicas, w.hpa_min_replicas, w.hpa_max_replicas, w.containers,
  w.cpu_request_cores, w.cpu_p95_cores, w.memory_request_bytes, w.memory_max_bytes,
  coalesce(o.oom_kills, 0) AS oom_kills,
  r.savings_monthly_usd,
  CASE
    WHEN a.result IS NOT NULL THEN a.result
    WHEN r.recommendations IS NOT NULL THEN 'pending'
    ELSE 'none'
  END AS status
FROM per_workload w
LEFT JOIN ooms o ON o.namespace = w.namespace AND o.kind = w.kind AND o.name = w.name
LEFT JOIN recommended r ON r.namespace = w.namespace AND r.kind = w.kind AND r.name = w.name
LEFT JOIN acted a ON a.namespace = w.namespace AND a.kind = w.kind AND a.name = w.name
ORDER BY w.namespace, w.kind, w.name
