-- name: decision_insert
-- Appends one decision and returns its id; decisions are never updated.
INSERT INTO screener_decisions (user_id, action, note, reviewer, decided_at, run_id, model_id, flag_share,
                                snooze_until)
VALUES ($user_id, $action, $note, $reviewer, $decided_at, $run_id, $model_id, $flag_share, $snooze_until)
RETURNING id;
