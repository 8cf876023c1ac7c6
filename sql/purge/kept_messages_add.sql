-- name: kept_messages_add
-- Adds the messages of the attached source sent at or after $cutoff (or with no time) to screener_purge_messages.
INSERT INTO screener_purge_messages (message_id)
SELECT s.message_id
FROM screener_source s
WHERE (s.sent_at IS NULL OR s.sent_at >= $cutoff)
  AND NOT EXISTS (SELECT 1 FROM screener_purge_messages p WHERE p.message_id = s.message_id);
