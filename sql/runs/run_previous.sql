-- name: run_previous
-- The newest message time the latest earlier completed run of the same source recorded, for "new since last run".
SELECT newest_message_at
FROM screener_runs
WHERE status = 'completed' AND source = $source AND run_id < $run_id
ORDER BY run_id DESC
LIMIT 1;
