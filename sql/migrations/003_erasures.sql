-- name: 003_erasures
-- Schema version 3: one tombstone row per erasure request or retention purge, holding counts and never personal data.
CREATE TABLE IF NOT EXISTS screener_erasures (
    erasure_id BIGINT PRIMARY KEY,
    -- 'user' (an erasure request for one person) or 'retention' (results older than a cutoff).
    kind VARCHAR NOT NULL,
    -- The caller's id of the erasure request, for audits and for refusing to carry one out twice; NULL for retention.
    request_id VARCHAR,
    erased_at TIMESTAMPTZ NOT NULL,
    -- Retention: results about times before this were removed. NULL for a user erasure.
    cutoff TIMESTAMPTZ,
    -- A JSON object: rows removed (or, under "table.column", text cells blanked) per table.
    removed VARCHAR NOT NULL,
    -- User erasure: how many of the person's messages the source archives still hold (screener never deletes them).
    source_messages_left BIGINT
);
