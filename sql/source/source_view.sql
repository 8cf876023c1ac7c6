-- name: source_view
-- Canonical view of the archive: one row per message_id.
CREATE OR REPLACE TEMP VIEW screener_source AS
SELECT message_id, user_id, sent_at, text
FROM screener_source_rows
-- A duplicated message_id is one message: the earliest copy is kept, so it is scored and counted once.
QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY sent_at NULLS LAST, text) = 1;
