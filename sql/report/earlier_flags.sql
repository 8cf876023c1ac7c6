-- name: earlier_flags
-- For the run's flagged users, the as-of times of earlier completed runs that flagged them too.
SELECT f2.user_id, r.as_of
FROM screener_flags f
JOIN screener_flags f2 ON f2.user_id = f.user_id AND f2.run_id < f.run_id
JOIN screener_runs r ON r.run_id = f2.run_id AND r.status = 'completed'
WHERE f.run_id = $run_id
ORDER BY f2.user_id, r.as_of;
