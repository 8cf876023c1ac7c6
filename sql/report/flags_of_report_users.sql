-- name: flags_of_report_users
-- The flags of run $run_id of the users the report shows (screener_report_users) in rank order, with the run each was
-- first flagged in (as flags_for_run gives them for every flagged user).
SELECT f.*, (
    SELECT min(r.as_of) FROM screener_flags f2 JOIN screener_runs r ON r.run_id = f2.run_id
    WHERE f2.user_id = f.user_id AND f2.run_id <= f.run_id AND r.status = 'completed'
) AS first_flagged
FROM screener_flags f
JOIN screener_report_users u ON u.user_id = f.user_id
WHERE f.run_id = $run_id
ORDER BY f.rank;
