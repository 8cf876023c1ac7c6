-- name: demo_load
-- Copies the shipped example archive (registered as screener_demo_archive) into the demo database's messages table.
CREATE TABLE messages AS SELECT message_id, user_id, sent_at, text FROM screener_demo_archive;
