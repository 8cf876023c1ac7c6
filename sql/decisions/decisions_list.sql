-- name: decisions_list
-- Every decision, or those on $user_id when it is not NULL, newest first.
SELECT id, user_id, action, note, reviewer, decided_at, run_id, model_id, flag_share, snooze_until
FROM screener_decisions
WHERE $user_id IS NULL OR user_id = $user_id
ORDER BY decided_at DESC, id DESC;
