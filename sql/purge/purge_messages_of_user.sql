-- name: purge_messages_of_user
-- Adds the messages of one user in the attached source (screener_source) to screener_purge_messages.
INSERT INTO screener_purge_messages (message_id, text)
SELECT s.message_id, s.text
FROM screener_source s
WHERE s.user_id = $user_id
  AND NOT EXISTS (SELECT 1 FROM screener_purge_messages p WHERE p.message_id = s.message_id);
