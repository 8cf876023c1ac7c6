-- name: evidence
-- The most negative messages of each flagged user inside the short window, with their labels: what staff read first.
SELECT user_id, message_id, sent_at, p_negative, label, text
FROM (
    SELECT s.user_id, s.message_id, s.sent_at, sc.p_negative,
           screener_label(sc.p_negative, sc.p_neutral, sc.p_positive, $threshold) AS label, s.text,
           row_number() OVER (PARTITION BY s.user_id ORDER BY sc.p_negative DESC, s.sent_at DESC) AS k
    FROM screener_source s
    JOIN screener_flags f ON f.user_id = s.user_id AND f.run_id = $run_id
    JOIN screener_scores sc ON sc.message_id = s.message_id AND sc.model_id = $model_id
    WHERE s.sent_at <= $as_of AND s.sent_at > $as_of - to_days(CAST($short_days AS INTEGER))
)
WHERE k <= $per_user
ORDER BY user_id, k;
