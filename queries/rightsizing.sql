-- Rightsizing: recommended CPU and memory requests and limits for every container of every
-- workload (Deployment, StatefulSet, DaemonSet, and Job/CronJob templates grouped across runs),
-- from the hourly rollups of the window.
--
-- Parameters:
--   $window_start, $window_end       the history to learn from, [start, end) (default 14 days)
--   $cpu_quantile                    CPU request = this quantile of usage (default 0.95)
--   $memory_margin                   memory request = peak × (1 + margin) (default 0.15)
--   $min_cpu_cores, $min_memory_bytes  floors (default 0.01 cores, 64 MiB)
--   $oom_bump_bytes, $oom_bump_factor  after an OOM kill memory is at least
--                                    max(level + bump_bytes, level × bump_factor), where level
--                                    is the larger of the peak and the highest limit it was
--                                    killed at in the window (default 100 MiB, 1.2)
--   $confident_hours                 hours of history (and of container-hours) for full
--                                    confidence (default 168, a week)
--   $hold_below_confidence           below this confidence the current values are kept (the
--                                    recommendation is held back; default 0.25)
--   $cpu_limit_policy                keep_ratio | equal_request | remove
--   $memory_limit_policy             equal_request | keep_ratio
--   $cpu_core_hour_usd, $memory_gib_hour_usd  unit prices for the savings (the cluster's
--                                    average, from node_prices.sql)
--
-- Percentiles merge the 5 % log-bucket histograms of every pod and hour of the workload's
-- container (the answer is the end of the bucket holding the quantile: the nearest-rank
-- percentile rounded up by at most one 5 % bucket, as the VPA recommender does; with few
-- samples far apart it can sit below an interpolating percentile such as DuckDB's
-- quantile_cont, which invents values between samples. Rounding up, never interpolating, is
-- the choice: a request is set from usage that happened). Memory uses the
-- exact maximum of every hour, so the startup peaks of the first minutes after a container
-- starts are seen, never averaged away. For a workload with an HPA the CPU request is the
-- quantile divided by the HPA's target utilisation: at that usage the HPA sits at its target,
-- so the vertical and the horizontal recommendation agree instead of chasing each other.
-- Savings are per month (730 h) for the average number of running containers.
WITH usage AS (
  SELECT
    namespace,
    workload_kind,
    workload_name,
    container,
    count(DISTINCT pod) AS pods,
    sum(samples) AS samples,
    -- One rollup row per container and hour once compacted.
    count(*) AS container_hours,
    (to_unixtime(max(time)) - to_unixtime(min(time))) / 3600.0 + 1.0 AS history_hours,
    cpu_quantile(cpu_histogram, 0.5) AS cpu_p50_cores,
    cpu_quantile(cpu_histogram, 0.95) AS cpu_p95_cores,
    cpu_quantile(cpu_histogram, 0.99) AS cpu_p99_cores,
    cpu_quantile(cpu_histogram, $cpu_quantile) AS cpu_target_cores,
    max(cpu_max) AS cpu_max_cores,
    memory_quantile(memory_histogram, 0.95) AS memory_p95_bytes,
    max(memory_max) AS memory_peak_bytes
  FROM container_usage_hourly
  WHERE time >= $window_start AND time < $window_end AND workload_name <> ''
  GROUP BY namespace, workload_kind, workload_name, container
),
kills AS (
  SELECT
    namespace,
    workload_kind,
    workload_name,
    coalesce(container, '') AS container,
    sum(CASE WHEN reason = 'OOMKilled' THEN 1 ELSE 0 END) AS oom_kills,
    sum(CASE WHEN reason = 'Restarted' THEN 1 ELSE 0 END) AS restarts,
    -- The highest limit it was killed at: never recommend below an OOM level.
    max(CASE WHEN reason = 'OOMKilled' THEN memory_limit_bytes END) AS oom_limit_bytes
  FROM events
  WHERE time >= $window_start AND time < $window_end AND reason IN ('OOMKilled', 'Restarted')
  GROUP BY namespace, workload_kind, workload_name, coalesce(container, '')
),
spec AS (
  SELECT * FROM (
    SELECT
      namespace, kind, name, container, replicas, deleted,
      cpu_request_cores, cpu_limit_cores, memory_request_bytes, memory_limit_bytes,
      hpa_target_cpu_utilization,
      row_number() OVER (PARTITION BY namespace, kind, name, container ORDER BY time DESC) AS newest
    FROM workloads
    WHERE time < $window_end
  ) WHERE newest = 1
),
joined AS (
  SELECT
    u.*,
    s.replicas,
    s.cpu_request_cores AS cur_cpu,
    s.cpu_limit_cores AS cur_cpu_limit,
    s.memory_request_bytes AS cur_mem,
    s.memory_limit_bytes AS cur_mem_limit,
    s.hpa_target_cpu_utilization AS hpa_target,
    coalesce(k.oom_kills, 0) AS oom_kills,
    coalesce(k.restarts, 0) AS restarts,
    k.oom_limit_bytes,
    least(1.0, u.history_hours / $confident_hours, u.container_hours / $confident_hours) AS confidence,
    u.container_hours / u.history_hours AS avg_containers,
    greatest(u.memory_peak_bytes, coalesce(k.oom_limit_bytes, 0)) AS oom_level
  FROM usage u
  LEFT JOIN spec s
    ON s.namespace = u.namespace AND s.kind = u.workload_kind AND s.name = u.workload_name
    AND s.container = u.container
  LEFT JOIN kills k
    ON k.namespace = u.namespace AND k.workload_kind = u.workload_kind
    AND k.workload_name = u.workload_name AND k.container = u.container
  WHERE s.deleted IS NULL OR NOT s.deleted
),
learned AS (
  SELECT
    *,
    ceil(greatest($min_cpu_cores, cpu_target_cores / coalesce(hpa_target, 1.0)) * 1000.0) / 1000.0 AS learned_cpu,
    CAST(ceil(greatest(
      CAST($min_memory_bytes AS DOUBLE),
      CASE WHEN oom_kills > 0
        THEN greatest(oom_level + $oom_bump_bytes, oom_level * $oom_bump_factor)
        ELSE memory_peak_bytes * (1.0 + $memory_margin)
      END
    ) / 1048576.0) * 1048576.0 AS BIGINT) AS learned_mem
  FROM joined
),
held AS (
  SELECT
    *,
    confidence < $hold_below_confidence AS held_back,
    CASE WHEN confidence < $hold_below_confidence AND cur_cpu IS NOT NULL THEN cur_cpu ELSE learned_cpu END AS rec_cpu,
    -- An OOM kill is never held back: more memory is always safe.
    CASE WHEN confidence < $hold_below_confidence AND cur_mem IS NOT NULL AND oom_kills = 0 THEN cur_mem ELSE learned_mem END AS rec_mem
  FROM learned
),
limited AS (
  SELECT
    *,
    CASE WHEN held_back THEN cur_cpu_limit ELSE CASE $cpu_limit_policy
      WHEN 'remove' THEN CAST(NULL AS DOUBLE)
      WHEN 'equal_request' THEN rec_cpu
      -- keep_ratio: the current limit/request ratio, and never below the highest usage seen
      -- (startup peaks included), so the new limit throttles no more than the old one.
      ELSE CASE WHEN cur_cpu_limit IS NULL THEN CAST(NULL AS DOUBLE)
        WHEN cur_cpu IS NULL OR cur_cpu = 0 THEN greatest(cur_cpu_limit, rec_cpu)
        ELSE ceil(greatest(rec_cpu * cur_cpu_limit / cur_cpu, least(cpu_max_cores, cur_cpu_limit)) * 1000.0) / 1000.0
      END
    END END AS rec_cpu_limit,
    CASE WHEN held_back AND oom_kills = 0 THEN cur_mem_limit ELSE CASE $memory_limit_policy
      WHEN 'keep_ratio' THEN CASE WHEN cur_mem_limit IS NULL THEN CAST(NULL AS BIGINT)
        WHEN cur_mem IS NULL OR cur_mem = 0 THEN greatest(cur_mem_limit, rec_mem)
        ELSE CAST(ceil(rec_mem * CAST(cur_mem_limit AS DOUBLE) / cur_mem / 1048576.0) * 1048576.0 AS BIGINT)
      END
      ELSE rec_mem
    END END AS rec_mem_limit
  FROM held
)
SELECT
  'rightsizing' AS kind,
  namespace,
  workload_kind AS target_kind,
  workload_name AS target_name,
  container,
  cur_cpu AS current_cpu_request_cores,
  rec_cpu AS recommended_cpu_request_cores,
  cur_cpu_limit AS current_cpu_limit_cores,
  rec_cpu_limit AS recommended_cpu_limit_cores,
  cur_mem AS current_memory_request_bytes,
  rec_mem AS recommended_memory_request_bytes,
  cur_mem_limit AS current_memory_limit_bytes,
  rec_mem_limit AS recommended_memory_limit_bytes,
  replicas AS current_replicas,
  round(confidence, 3) AS confidence,
  concat(
    'CPU p50/p95/p99 ', round(cpu_p50_cores, 3), '/', round(cpu_p95_cores, 3), '/', round(cpu_p99_cores, 3),
    ' cores, max ', round(cpu_max_cores, 3), ' (startup peaks included); request = p',
    CAST(CAST($cpu_quantile * 100 AS BIGINT) AS VARCHAR),
    CASE WHEN hpa_target IS NOT NULL
      THEN concat(' / HPA target ', CAST(CAST(hpa_target * 100 AS BIGINT) AS VARCHAR), ' %')
      ELSE '' END,
    ' = ', round(learned_cpu, 3), ' cores',
    CASE WHEN learned_cpu <= $min_cpu_cores THEN ' (the minimum)' ELSE '' END,
    '. Memory p95 ', round(memory_p95_bytes / 1048576.0, 1),
    ' MiB, peak ', round(memory_peak_bytes / 1048576.0, 1), ' MiB',
    CASE WHEN oom_kills > 0
      THEN concat('; ', oom_kills, ' OOM kill(s) at a limit of up to ',
        round(oom_limit_bytes / 1048576.0, 1), ' MiB: request = max(',
        round(oom_level / 1048576.0, 1), ' MiB + ', round($oom_bump_bytes / 1048576.0, 1), ' MiB, ',
        round(oom_level / 1048576.0, 1), ' MiB × ', $oom_bump_factor, ')')
      ELSE concat(' + ', round($memory_margin * 100, 1), ' % margin') END,
    ' = ', round(learned_mem / 1048576.0, 1), ' MiB',
    CASE WHEN learned_mem <= $min_memory_bytes THEN ' (the minimum)' ELSE '' END,
    CASE WHEN restarts > 0 THEN concat('; ', restarts, ' restart(s)') ELSE '' END,
    '. ', samples, ' samples over ', round(history_hours, 1), ' h from ', pods, ' pod(s); confidence ',
    round(confidence, 2),
    CASE WHEN held_back THEN ': too little history, current values kept (held back)'
      WHEN confidence < 1.0 THEN ': low confidence, not for automatic apply'
      ELSE '' END
  ) AS why,
  round(730.0 * avg_containers * (
    (coalesce(cur_cpu, 0.0) - rec_cpu) * $cpu_core_hour_usd
    + (coalesce(cur_mem, 0) - rec_mem) / 1073741824.0 * $memory_gib_hour_usd
  ), 2) AS savings_monthly_usd,
  cpu_p50_cores,
  cpu_p95_cores,
  cpu_p99_cores,
  cpu_max_cores,
  memory_p95_bytes,
  memory_peak_bytes,
  oom_kills,
  restarts,
  samples
FROM limited
ORDER BY namespace, target_kind, target_name, container
