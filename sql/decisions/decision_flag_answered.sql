-- name: decision_flag_answered
-- The flag a decision on $user_id answers: the user's flag in the latest completed run that flagged them.
SELECT f.run_id, r.model_id, f.ratio
FROM screener_flags f
JOIN screener_runs r ON r.run_id = f.run_id AND r.status = 'completed'
WHERE f.user_id = $user_id
ORDER BY f.run_id DESC
LIMIT 1;
