-- name: run_latest
-- The latest completed run.
SELECT run_id FROM screener_runs WHERE status = 'completed' ORDER BY run_id DESC LIMIT 1;
