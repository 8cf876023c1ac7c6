-- name: source_view
-- Canonical view of the archive with the configured identifiers (allow-listed, quoted); one row per message_id.
CREATE OR REPLACE TEMP VIEW screener_source AS
SELECT message_id, user_id, sent_at, text
FROM (
    SELECT
        CAST({message_id} AS VARCHAR) AS message_id,
        CAST({user_id} AS VARCHAR) AS user_id,
        CAST({sent_at} AS TIMESTAMPTZ) AS sent_at,
        CAST({text} AS VARCHAR) AS text
    FROM {table}
)
WHERE message_id IS NOT NULL
-- A duplicated message_id is one message: the earliest copy is kept, so it is scored and counted once.
QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY sent_at NULLS LAST, text) = 1;
