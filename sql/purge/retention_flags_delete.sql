-- name: retention_flags_delete
-- Deletes the flags of runs as of a time before $cutoff (their runs are deleted next).
DELETE FROM screener_flags WHERE run_id IN (SELECT run_id FROM screener_runs WHERE as_of < $cutoff);
