-- name: run_finish
-- Closes a run record with its counts and the source's freshness.
UPDATE screener_runs SET
    finished_at = $finished_at,
    status = $status,
    messages_total = $messages_total,
    messages_scored = $messages_scored,
    messages_skipped = $messages_skipped,
    skipped_by_reason = $skipped_by_reason,
    messages_with_score = $messages_with_score,
    messages_not_aggregated = $messages_not_aggregated,
    not_aggregated_by_reason = $not_aggregated_by_reason,
    newest_message_at = $newest_message_at,
    messages_new = $messages_new,
    messages_in_window = $messages_in_window,
    freshness = $freshness,
    users_seen = $users_seen,
    users_flagged = $users_flagged,
    seconds = $seconds,
    error = $error
WHERE run_id = $run_id;
