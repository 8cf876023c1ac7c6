-- name: purge_messages_count
-- How many messages screener_purge_messages holds.
SELECT count(*) FROM screener_purge_messages;
