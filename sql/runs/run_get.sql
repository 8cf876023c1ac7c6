-- name: run_get
-- One run record.
SELECT run_id, started_at, finished_at, status, source, model_name, model_id, as_of, messages_total,
       messages_scored, messages_skipped, skipped_by_reason, users_seen, users_flagged, seconds, config, error
FROM screener_runs WHERE run_id = $run_id;
