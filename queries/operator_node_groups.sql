-- The node groups a consolidation plan would shrink, as the operator materialises them
-- (NodeGroupRecommendation objects): one row per node group whose target is below its
-- current node count, with the nodes that can go.
--
-- Parameters:
--   $run_id   the analysis run; '' for the newest run that has consolidation rows
--
-- The plan's rows (kind 'consolidation', see appliance/analysis/src/rows.rs): one per node
-- group (target_kind 'NodeGroup': current and recommended node counts, why, savings) and one
-- per node (target_kind 'Node': recommended_replicas 0 when it can go). A node belongs to the
-- group its newest node_usage row before the plan names (the group the plan was made for).
WITH run AS (
  SELECT CASE WHEN $run_id <> '' THEN $run_id ELSE (
    SELECT run_id FROM recommendations WHERE kind = 'consolidation' ORDER BY time DESC LIMIT 1
  ) END AS run_id
),
plan AS (
  SELECT r.*
  FROM recommendations r
  JOIN run ON r.run_id = run.run_id
  WHERE r.kind = 'consolidation'
),
node_groups AS (
  SELECT node, first_value(node_group ORDER BY time DESC) AS node_group
  FROM node_usage
  WHERE time <= (SELECT max(time) FROM plan)
    AND time >= (SELECT max(time) FROM plan) - INTERVAL '1 day'
  GROUP BY node
),
removable AS (
  SELECT g.node_group, p.target_name AS node
  FROM plan p
  JOIN node_groups g ON g.node = p.target_name
  WHERE p.target_kind = 'Node' AND p.recommended_replicas = 0
)
SELECT
  p.run_id,
  p.target_name AS node_group,
  p.current_replicas AS current_nodes,
  p.recommended_replicas AS target_nodes,
  coalesce(string_agg(r.node, ',' ORDER BY r.node), '') AS nodes_to_remove,
  p.why,
  p.savings_monthly_usd
FROM plan p
LEFT JOIN removable r ON r.node_group = p.target_name
WHERE p.target_kind = 'NodeGroup' AND p.recommended_replicas < p.current_replicas
GROUP BY p.run_id, p.target_name, p.current_replicas, p.recommended_replicas, p.why, p.savings_monthly_usd
ORDER BY node_group
