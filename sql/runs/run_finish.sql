-- name: run_finish
-- Closes a run record with its counts.
UPDATE screener_runs SET
    finished_at = $finished_at,
    status = $status,
    messages_total = $messages_total,
    messages_scored = $messages_scored,
    messages_skipped = $messages_skipped,
    skipped_by_reason = $skipped_by_reason,
    users_seen = $users_seen,
    users_flagged = $users_flagged,
    seconds = $seconds,
    error = $error
WHERE run_id = $run_id;
