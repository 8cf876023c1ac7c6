-- name: flags_insert
-- Stores the users the rules matched, each under its first rule, ranked by Wilson lower bound: 3 of 3 below 45 of 50.
INSERT INTO screener_flags BY NAME
SELECT
    $run_id AS run_id, s.user_id,
    row_number() OVER (ORDER BY s.wilson_lower DESC, s.n_short DESC, s.user_id) AS rank,
    s.n_short AS n_messages, s.neg_short AS n_negative, s.ratio_short AS ratio, s.wilson_lower,
    s.n_long, s.neg_long, s.ratio_long, s.n_last, s.neg_last, s.ratio_last, s.baseline_n, s.baseline_ratio,
    s.escalating, h.rule, h.reason
FROM screener_user_stats s
JOIN (
    SELECT user_id, rule, reason
    FROM screener_rule_hits
    QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY priority) = 1
) h ON h.user_id = s.user_id;
