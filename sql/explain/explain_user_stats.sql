-- name: explain_user_stats
-- The recomputed window statistics of one user (see sql/flags/user_stats.sql).
SELECT * FROM screener_user_stats WHERE user_id = $user_id;
