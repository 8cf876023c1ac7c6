-- name: purge_message_terms
-- The ids and texts of the messages in screener_purge_messages, to find them quoted in free text.
SELECT message_id, text FROM screener_purge_messages;
