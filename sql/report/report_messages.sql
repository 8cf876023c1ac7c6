-- name: report_messages
-- The scored messages up to $as_of of the users the report shows (screener_report_users), read from the archive.
-- One row per message id as in screener_source (sql/source/source_view.sql: the earliest copy kept), but only the
-- copies of message ids of which some copy belongs to one of those users are sorted out, so a page of users does not
-- deduplicate the whole archive. The daily series and the evidence read this table.
CREATE OR REPLACE TEMP TABLE screener_report_messages AS
WITH candidates AS (
    SELECT DISTINCT message_id
    FROM screener_source_rows
    WHERE user_id IN (SELECT user_id FROM screener_report_users)
),
messages AS (
    SELECT r.message_id, r.user_id, r.sent_at, r.text
    FROM screener_source_rows r
    SEMI JOIN candidates c ON c.message_id = r.message_id
    QUALIFY row_number() OVER (PARTITION BY r.message_id ORDER BY r.sent_at NULLS LAST, r.text) = 1
)
SELECT m.user_id, m.message_id, m.sent_at, m.text, sc.p_negative, sc.p_neutral, sc.p_positive
FROM messages m
JOIN screener_report_users u ON u.user_id = m.user_id
JOIN screener_scores sc ON sc.message_id = m.message_id AND sc.model_id = $model_id
WHERE m.sent_at <= $as_of;
