-- name: erasure_next_id
-- The id for a new tombstone row.
SELECT coalesce(max(erasure_id), 0) + 1 FROM screener_erasures;
