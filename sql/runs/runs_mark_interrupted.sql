-- name: runs_mark_interrupted
-- Runs left 'running' by a killed process are marked interrupted; the caller holds the database's write lock.
UPDATE screener_runs SET status = 'interrupted' WHERE status = 'running';
