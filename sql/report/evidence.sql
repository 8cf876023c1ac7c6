-- name: evidence
-- The most negative messages inside the short window of each user the report shows (screener_report_users): what
-- support staff read first.
SELECT user_id, message_id, sent_at, p_negative, text
FROM (
    SELECT s.user_id, s.message_id, s.sent_at, sc.p_negative, s.text,
           row_number() OVER (PARTITION BY s.user_id ORDER BY sc.p_negative DESC, s.sent_at DESC) AS k
    FROM screener_source s
    JOIN screener_report_users u ON u.user_id = s.user_id
    JOIN screener_scores sc ON sc.message_id = s.message_id AND sc.model_id = $model_id
    WHERE s.sent_at <= $as_of AND s.sent_at > $as_of - to_days(CAST($short_days AS INTEGER))
)
WHERE k <= $per_user
ORDER BY user_id, k;
