-- name: daily_series
-- Daily message and negative counts over the $days days up to as_of (UTC days), zero-filled, of the users the report
-- shows (the screener_report_users view).
WITH days AS (
    SELECT CAST(d AS DATE) AS day
    FROM generate_series(
        CAST(CAST($as_of AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE) - CAST($days AS INTEGER) + 1,
        CAST(CAST($as_of AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE),
        INTERVAL 1 DAY) AS g(d)
),
users AS (SELECT user_id FROM screener_report_users),
msgs AS (
    SELECT s.user_id, CAST(s.sent_at AT TIME ZONE 'UTC' AS DATE) AS day,
           count(*) AS n, sum(CAST(sc.p_negative >= $threshold AS INTEGER)) AS neg
    FROM screener_source s
    JOIN users u ON u.user_id = s.user_id
    JOIN screener_scores sc ON sc.message_id = s.message_id AND sc.model_id = $model_id
    WHERE s.sent_at <= $as_of
      AND CAST(s.sent_at AT TIME ZONE 'UTC' AS DATE) >= (SELECT min(day) FROM days)
    GROUP BY ALL
)
SELECT u.user_id, d.day, coalesce(m.n, 0) AS n, coalesce(m.neg, 0) AS neg
FROM users u CROSS JOIN days d
LEFT JOIN msgs m ON m.user_id = u.user_id AND m.day = d.day
ORDER BY u.user_id, d.day;
