-- name: high_negative_share
-- At least $min_messages messages in the last $short_window_days days, with a negative share of at least $min_ratio.
INSERT INTO screener_rule_hits (rule, priority, user_id, reason)
SELECT
    $rule, $priority, user_id,
    printf('%d of %d messages in the last %d days negative (%.0f%%), threshold %.0f%% with at least %d messages',
           neg_short, n_short, $short_window_days, 100 * ratio_short, 100 * $min_ratio, $min_messages)
FROM screener_user_stats
WHERE n_short >= $min_messages AND ratio_short >= $min_ratio;
