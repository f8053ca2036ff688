-- Replicas and HPAs, from each Deployment's demand over the day, together with the per-pod
-- requests this analysis run recommends (so the horizontal and the vertical recommendation
-- are made for each other and never fight).
--
-- Parameters:
--   $window_start, $window_end  the history, [start, end)
--   $run_id                     the analysis run whose rightsizing rows (already written to
--                               the recommendations table) give the per-pod requests
--   $confident_hours            hours of demand for full confidence (default 168)
--   $headroom                   spare capacity over the highest hourly demand (default 0.2)
--   $hpa_target                 target utilisation suggested for a new HPA (default 0.7)
--   $swing_for_hpa              a workload without an HPA whose busiest hour needs this many
--                               times the pods of its quietest gets one suggested (default 2)
--   $cpu_core_hour_usd, $memory_gib_hour_usd  unit prices for the savings
--
-- demand: per hour, the sum over the workload's pods and containers of each one's mean CPU
-- in that hour. R: the recommended CPU request of one pod (sum over its containers).
-- With an HPA (kind hpa): min = pods for the quietest hour, max = pods for the busiest hour
-- plus headroom, both at the HPA's own target. Without one (kind replicas): a workload
-- whose demand swings by $swing_for_hpa or more gets an HPA suggested (min and max as
-- above at $hpa_target); a steady one gets the replicas its busiest hour needs. Never fewer
-- than one replica (serving workloads are never scaled to zero), never fewer than two when it
-- has two or more now (one zone or node down must not take it down), and always more than
-- its PodDisruptionBudget's maxUnavailable, so a drain never takes every pod. StatefulSets,
-- DaemonSets and jobs get no replica recommendations.
WITH per_container_hour AS (
  SELECT namespace, workload_name, pod, container, time,
    sum(cpu_sum) / sum(samples) AS cpu_cores
  FROM container_usage_hourly
  WHERE time >= $window_start AND time < $window_end AND workload_kind = 'Deployment'
  GROUP BY namespace, workload_name, pod, container, time
),
demand AS (
  SELECT namespace, workload_name, time, sum(cpu_cores) AS cpu_cores
  FROM per_container_hour
  GROUP BY namespace, workload_name, time
),
swing AS (
  SELECT namespace, workload_name,
    min(cpu_cores) AS quietest_cores,
    max(cpu_cores) AS busiest_cores,
    avg(cpu_cores) AS mean_cores,
    count(*) AS hours
  FROM demand
  GROUP BY namespace, workload_name
),
spec AS (
  SELECT * FROM (
    SELECT
      namespace, name, container, replicas, hpa_min_replicas, hpa_max_replicas,
      hpa_target_cpu_utilization, pdb_max_unavailable, deleted,
      row_number() OVER (PARTITION BY namespace, kind, name, container ORDER BY time DESC) AS newest
    FROM workloads
    WHERE time < $window_end AND kind = 'Deployment'
  ) WHERE newest = 1 AND NOT deleted
),
workload AS (
  SELECT namespace, name,
    max(replicas) AS replicas,
    max(hpa_min_replicas) AS hpa_min,
    max(hpa_max_replicas) AS hpa_max,
    max(hpa_target_cpu_utilization) AS hpa_target,
    max(pdb_max_unavailable) AS pdb_max_unavailable
  FROM spec
  GROUP BY namespace, name
),
pod_request AS (
  SELECT namespace, target_name AS name,
    sum(recommended_cpu_request_cores) AS cpu_cores,
    sum(recommended_memory_request_bytes) AS memory_bytes
  FROM recommendations
  WHERE run_id = $run_id AND kind = 'rightsizing' AND target_kind = 'Deployment'
  GROUP BY namespace, target_name
),
sized AS (
  SELECT
    w.*,
    s.quietest_cores, s.busiest_cores, s.mean_cores, s.hours,
    r.cpu_cores AS pod_cpu,
    r.memory_bytes AS pod_memory,
    coalesce(w.hpa_target, $hpa_target) AS target,
    greatest(
      1,
      CASE WHEN coalesce(w.hpa_min, w.replicas) >= 2 THEN 2 ELSE 1 END,
      coalesce(w.pdb_max_unavailable, 0) + 1
    ) AS floor_replicas
  FROM workload w
  JOIN swing s ON s.namespace = w.namespace AND s.workload_name = w.name
  JOIN pod_request r ON r.namespace = w.namespace AND r.name = w.name
  WHERE r.cpu_cores > 0
),
planned AS (
  SELECT
    *,
    CAST(greatest(floor_replicas, ceil(quietest_cores / (pod_cpu * target))) AS BIGINT) AS rec_min,
    CAST(greatest(floor_replicas, ceil(busiest_cores * (1.0 + $headroom) / (pod_cpu * target))) AS BIGINT) AS rec_max_raw,
    CAST(greatest(floor_replicas, ceil(busiest_cores * (1.0 + $headroom) / pod_cpu)) AS BIGINT) AS steady_replicas,
    -- The pods the HPA would run on average: the mean demand at its target.
    greatest(CAST(floor_replicas AS DOUBLE), mean_cores / (pod_cpu * target)) AS hpa_mean_pods,
    pod_cpu * $cpu_core_hour_usd + pod_memory / 1073741824.0 * $memory_gib_hour_usd AS pod_hour_usd
  FROM sized
),
decided AS (
  SELECT
    *,
    greatest(rec_max_raw, rec_min + 1) AS rec_max,
    hpa_min IS NULL AND rec_max_raw >= $swing_for_hpa * rec_min AND replicas >= 2 AS suggest_hpa
  FROM planned
)
SELECT
  CASE WHEN hpa_min IS NOT NULL OR suggest_hpa THEN 'hpa' ELSE 'replicas' END AS kind,
  namespace,
  'Deployment' AS target_kind,
  name AS target_name,
  CAST(NULL AS VARCHAR) AS container,
  coalesce(hpa_min, replicas) AS current_replicas,
  CASE WHEN hpa_min IS NOT NULL OR suggest_hpa THEN rec_min ELSE steady_replicas END AS recommended_replicas,
  hpa_max AS current_max_replicas,
  CASE WHEN hpa_min IS NOT NULL OR suggest_hpa THEN rec_max END AS recommended_max_replicas,
  hpa_target AS current_target_cpu_utilization,
  CASE WHEN hpa_min IS NOT NULL OR suggest_hpa THEN target END AS recommended_target_cpu_utilization,
  least(1.0, hours / $confident_hours) AS confidence,
  concat(
    'Demand over ', hours, ' h: quietest hour ', round(quietest_cores, 3), ' cores, mean ',
    round(mean_cores, 3), ', busiest ', round(busiest_cores, 3), '; recommended pod request ',
    round(pod_cpu, 3), ' cores. ',
    CASE
      WHEN hpa_min IS NOT NULL THEN concat('HPA at ', CAST(CAST(target * 100 AS BIGINT) AS VARCHAR),
        ' %: min ', rec_min, ' (quietest hour), max ', greatest(rec_max_raw, rec_min + 1),
        ' (busiest hour + ', CAST(CAST($headroom * 100 AS BIGINT) AS VARCHAR), ' % headroom)')
      WHEN suggest_hpa THEN concat('Demand swings ', round(busiest_cores / greatest(quietest_cores, 0.001), 1),
        '× over the day: an HPA at ', CAST(CAST(target * 100 AS BIGINT) AS VARCHAR), ' % with min ',
        rec_min, ' and max ', greatest(rec_max_raw, rec_min + 1), ' follows it instead of ', replicas,
        ' fixed replicas')
      ELSE concat('Steady demand: ', steady_replicas, ' replicas carry the busiest hour + ',
        CAST(CAST($headroom * 100 AS BIGINT) AS VARCHAR), ' % headroom')
    END,
    CASE WHEN pdb_max_unavailable IS NOT NULL
      THEN concat('; at least ', floor_replicas, ' for the PDB (maxUnavailable ', pdb_max_unavailable, ')')
      ELSE concat('; at least ', floor_replicas) END
  ) AS why,
  round(730.0 * pod_hour_usd * CASE
    WHEN hpa_min IS NOT NULL THEN 0.0
    WHEN suggest_hpa THEN replicas - hpa_mean_pods
    ELSE replicas - steady_replicas
  END, 2) AS savings_monthly_usd
FROM decided
WHERE hpa_min IS NOT NULL
  OR suggest_hpa
  OR steady_replicas <> replicas
ORDER BY namespace, target_name
