-- name: evidence
-- The most negative messages inside the short window of each user the report shows (from screener_report_messages),
-- with their labels: what support staff read first.
SELECT user_id, message_id, sent_at, p_negative, label, text
FROM (
    SELECT user_id, message_id, sent_at, p_negative,
           screener_label(p_negative, p_neutral, p_positive, $threshold) AS label, text,
           row_number() OVER (PARTITION BY user_id ORDER BY p_negative DESC, sent_at DESC) AS k
    FROM screener_report_messages
    WHERE sent_at > $as_of - to_days(CAST($short_days AS INTEGER))
)
WHERE k <= $per_user
ORDER BY user_id, k;
