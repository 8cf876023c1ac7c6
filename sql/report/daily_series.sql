-- name: daily_series
-- Daily message and negative counts over the $days days up to as_of (UTC days), zero-filled, of the users the report
-- shows, from their scored messages in screener_report_messages.
WITH days AS (
    SELECT CAST(d AS DATE) AS day
    FROM generate_series(
        CAST(CAST($as_of AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE) - CAST($days AS INTEGER) + 1,
        CAST(CAST($as_of AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE),
        INTERVAL 1 DAY) AS g(d)
),
msgs AS (
    SELECT user_id, CAST(sent_at AT TIME ZONE 'UTC' AS DATE) AS day,
           count(*) AS n,
           count(*) FILTER (WHERE screener_label(p_negative, p_neutral, p_positive, $threshold) = 'negative') AS neg
    FROM screener_report_messages
    WHERE CAST(sent_at AT TIME ZONE 'UTC' AS DATE) >= (SELECT min(day) FROM days)
    GROUP BY ALL
)
SELECT u.user_id, d.day, coalesce(m.n, 0) AS n, coalesce(m.neg, 0) AS neg
FROM screener_report_users u CROSS JOIN days d
LEFT JOIN msgs m ON m.user_id = u.user_id AND m.day = d.day
ORDER BY u.user_id, d.day;
