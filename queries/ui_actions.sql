-- The audit log, newest first (at most 200): every change the operator made or refused.
--
-- No parameters.
SELECT
  time, action_id, recommendation_id, operation, namespace, target_kind, target_name,
  actor, policy, result, message
FROM actions
ORDER BY time DESC, action_id
LIMIT 200
