-- name: run_next_id
-- The id for a new run.
SELECT coalesce(max(run_id), 0) + 1 FROM screener_runs;
