-- name: users_seen
-- Users with at least one scored message in the long window as of the run's time.
SELECT count(*) FROM screener_user_stats WHERE n_long > 0;
