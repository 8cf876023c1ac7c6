-- name: run_sources
-- The archives runs read and the settings they read them with; $since limits it to runs as of then or later.
SELECT source, config, max(run_id) AS run_id
FROM screener_runs
WHERE $since IS NULL OR as_of >= $since
GROUP BY source, config
ORDER BY run_id DESC;
