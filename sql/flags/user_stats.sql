-- name: user_stats
-- Per-user negative counts and ratios as of $as_of over the short, long and baseline windows and the last N messages,
-- the Wilson lower bound of the short-window ratio and the escalation mark; the flag rules in sql/rules/ read it.
-- Windows are half-open: (as_of - days, as_of]. A message exactly `days` before as_of is outside the window.
-- The baseline is the stretch just before the short window: (as_of - short - baseline, as_of - short].
-- A ratio is negative messages over all scored messages of the window: neutral and positive ones both count in the
-- denominator only, and a message is negative by the screener_label rule at $threshold (sql/schema/session_setup.sql).
CREATE OR REPLACE TEMP TABLE screener_user_stats AS
WITH scored AS (
    SELECT s.user_id, s.sent_at,
           CAST(screener_label(sc.p_negative, sc.p_neutral, sc.p_positive, $threshold) = 'negative' AS INTEGER) AS neg
    FROM screener_source s
    JOIN screener_scores sc ON sc.message_id = s.message_id AND sc.model_id = $model_id
    WHERE s.user_id IS NOT NULL AND s.sent_at IS NOT NULL AND s.sent_at <= $as_of
),
windows AS (
    SELECT
        user_id,
        count(*) FILTER (WHERE sent_at > $as_of - to_days(CAST($short_days AS INTEGER))) AS n_short,
        coalesce(sum(neg) FILTER (WHERE sent_at > $as_of - to_days(CAST($short_days AS INTEGER))), 0) AS neg_short,
        count(*) FILTER (WHERE sent_at > $as_of - to_days(CAST($long_days AS INTEGER))) AS n_long,
        coalesce(sum(neg) FILTER (WHERE sent_at > $as_of - to_days(CAST($long_days AS INTEGER))), 0) AS neg_long,
        count(*) FILTER (
            WHERE sent_at <= $as_of - to_days(CAST($short_days AS INTEGER))
              AND sent_at > $as_of - to_days(CAST($short_days AS INTEGER) + CAST($baseline_days AS INTEGER))
        ) AS baseline_n,
        coalesce(sum(neg) FILTER (
            WHERE sent_at <= $as_of - to_days(CAST($short_days AS INTEGER))
              AND sent_at > $as_of - to_days(CAST($short_days AS INTEGER) + CAST($baseline_days AS INTEGER))
        ), 0) AS baseline_neg,
        -- The last N messages' labels, newest first: a bounded top-N per user inside the same hash aggregate, so
        -- memory grows with the number of users, not with a window over every message.
        max_by(neg, sent_at, CAST($last_n AS BIGINT)) AS last_labels
    FROM scored
    GROUP BY user_id
),
stats AS (
    SELECT
        w.user_id, w.n_short, w.neg_short, w.n_long, w.neg_long, w.baseline_n, w.baseline_neg,
        len(w.last_labels) AS n_last, list_sum(w.last_labels) AS neg_last,
        CASE WHEN w.n_short > 0 THEN w.neg_short / w.n_short END AS ratio_short,
        CASE WHEN w.n_long > 0 THEN w.neg_long / w.n_long END AS ratio_long,
        list_sum(w.last_labels) / len(w.last_labels) AS ratio_last,
        CASE WHEN w.baseline_n >= $baseline_min_messages THEN w.baseline_neg / w.baseline_n END AS baseline_ratio,
        -- Wilson score interval, lower end: p + z^2/2n - z*sqrt(p(1-p)/n + z^2/4n^2), over 1 + z^2/n. It is 0 when
        -- no message is negative; rounding can leave it a hair below, which a lower-bound bar of 0 must not see.
        CASE WHEN w.n_short > 0 THEN greatest(0.0,
            (w.neg_short / w.n_short + $z * $z / (2 * w.n_short)
             - $z * sqrt((w.neg_short / w.n_short) * (1 - w.neg_short / w.n_short) / w.n_short
                         + $z * $z / (4 * w.n_short * w.n_short)))
            / (1 + $z * $z / w.n_short))
        ELSE 0 END AS wilson_lower
    FROM windows w
)
SELECT
    *,
    coalesce(ratio_short - baseline_ratio >= $escalation_delta, false) AS escalating
FROM stats;
