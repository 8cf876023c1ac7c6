-- name: high_negative_share
-- At least $min_messages messages in the last $short_window_days days, with a negative share of at least $min_ratio, and of at least $min_lower_bound even at the low end of its confidence interval (the Wilson lower bound).
-- The lower bound as well as the share: ordinary users write a negative message now and then and the model calls
-- some neutral ones negative, so among few messages a high share is often chance; the bound asks more of few
-- messages and nears the share itself as they grow.
INSERT INTO screener_rule_hits (rule, priority, user_id, reason)
SELECT
    $rule, $priority, user_id,
    printf('%d of %d messages in the last %d days negative (%.0f%%, lower bound %.0f%%), '
           || 'threshold %g%%, lower bound at least %g%%, with at least %d messages',
           neg_short, n_short, $short_window_days, 100 * ratio_short, 100 * wilson_lower, 100 * $min_ratio,
           100 * $min_lower_bound, $min_messages)
FROM screener_user_stats
WHERE n_short >= $min_messages AND ratio_short >= $min_ratio AND wilson_lower >= $min_lower_bound;
