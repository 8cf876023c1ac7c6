-- name: run_get
-- One run record.
SELECT run_id, started_at, finished_at, status, source, source_kind, model_name, model_id, as_of, messages_total,
       messages_scored, messages_skipped, skipped_by_reason, messages_with_score, messages_not_aggregated,
       not_aggregated_by_reason, newest_message_at, messages_new, messages_in_window, freshness, users_seen,
       users_flagged, seconds, config, error
FROM screener_runs WHERE run_id = $run_id;
