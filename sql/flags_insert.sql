-- name: flags_insert
-- Stores the run's flagged users, ranked by the Wilson lower bound so that 3 of 3 does not outrank 45 of 50.
INSERT INTO screener_flags
SELECT
    $run_id AS run_id, user_id,
    row_number() OVER (ORDER BY wilson_lower DESC, n_short DESC, user_id) AS rank,
    n_short AS n_messages, neg_short AS n_negative, ratio_short AS ratio, wilson_lower,
    n_long, neg_long, ratio_long, n_last, neg_last, ratio_last, baseline_n, baseline_ratio, escalating
FROM screener_user_stats
WHERE flagged;
