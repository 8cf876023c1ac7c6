-- name: explain_flag
-- The flag a run stored for one user, if it flagged them.
SELECT * FROM screener_flags WHERE run_id = $run_id AND user_id = $user_id;
