-- name: flags_for_run
-- A run's flagged users in rank order, with the run each was first flagged in.
SELECT f.*, (
    SELECT min(r.as_of) FROM screener_flags f2 JOIN screener_runs r ON r.run_id = f2.run_id
    WHERE f2.user_id = f.user_id AND f2.run_id <= f.run_id AND r.status = 'completed'
) AS first_flagged
FROM screener_flags f
WHERE f.run_id = $run_id
ORDER BY f.rank;
