-- name: rows_of_messages_delete
-- Deletes the rows of the messages in screener_purge_messages from a screener table with a message column.
DELETE FROM {table} WHERE {message_id} IN (SELECT message_id FROM screener_purge_messages);
