-- name: retention_runs_delete
-- Deletes the records of runs as of a time before $cutoff.
DELETE FROM screener_runs WHERE as_of < $cutoff;
