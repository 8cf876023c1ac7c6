-- name: flags_count
-- How many users a run flagged.
SELECT count(*) FROM screener_flags WHERE run_id = $run_id;
