-- name: purge_messages_create
-- An empty temp table for the messages a purge looks at: one person's, or those a retention purge keeps.
CREATE OR REPLACE TEMP TABLE screener_purge_messages (
    message_id VARCHAR NOT NULL,
    text VARCHAR
);
