-- name: user_stats_rows
-- All rows of the per-user statistics just computed by user_stats, for tests and exports.
SELECT * FROM screener_user_stats ORDER BY user_id;
