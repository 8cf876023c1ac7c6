-- name: run_abort
-- Closes a run that failed or was interrupted; a run that already completed keeps its record.
UPDATE screener_runs SET finished_at = $finished_at, status = $status, error = $error
WHERE run_id = $run_id AND status = 'running';
