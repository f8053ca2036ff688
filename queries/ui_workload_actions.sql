-- The audit log of one workload: every change the operator made or refused, newest first
-- (at most 100).
--
-- Parameters: $namespace, $kind, $name (the workload).
SELECT time, action_id, operation, actor, policy, before, after, result, message
FROM actions
WHERE namespace = $namespace AND target_kind = $kind AND target_name = $name
ORDER BY time DESC, action_id
LIMIT 100
