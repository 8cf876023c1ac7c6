-- name: run_insert
-- Opens a run record; its status stays 'running' until the run finishes, fails or is interrupted.
INSERT INTO screener_runs (run_id, started_at, status, source, source_kind, model_name, model_id, as_of, config)
VALUES ($run_id, $started_at, 'running', $source, $source_kind, $model_name, $model_id, $as_of, $config);
