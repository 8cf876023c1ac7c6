-- name: source_rows_view
-- Every archive row that has a message id, with the configured identifiers (allow-listed, quoted), copies included.
CREATE OR REPLACE TEMP VIEW screener_source_rows AS
SELECT message_id, user_id, sent_at, text
FROM (
    SELECT
        CAST({message_id} AS VARCHAR) AS message_id,
        CAST({user_id} AS VARCHAR) AS user_id,
        CAST({sent_at} AS TIMESTAMPTZ) AS sent_at,
        CAST({text} AS VARCHAR) AS text
    FROM {table}
)
WHERE message_id IS NOT NULL;
