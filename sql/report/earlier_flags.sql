-- name: earlier_flags
-- For the users the report shows (screener_report_users), the as-of times of earlier completed runs that flagged them.
SELECT f2.user_id, r.as_of
FROM screener_report_users u
JOIN screener_flags f2 ON f2.user_id = u.user_id AND f2.run_id < $run_id
JOIN screener_runs r ON r.run_id = f2.run_id AND r.status = 'completed'
ORDER BY f2.user_id, r.as_of;
