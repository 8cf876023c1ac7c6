-- name: retention_skipped_delete
-- Deletes the skip records of messages not kept by the retention purge (sent before the cutoff, or gone).
DELETE FROM screener_skipped k
WHERE NOT EXISTS (SELECT 1 FROM screener_purge_messages p WHERE p.message_id = k.message_id);
