-- name: latest_settings
-- The settings recorded with the newest run, to check a retention period against its windows.
SELECT config FROM screener_runs ORDER BY run_id DESC LIMIT 1;
