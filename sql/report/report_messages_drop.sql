-- name: report_messages_drop
-- Frees the report's copy of its users' messages.
DROP TABLE IF EXISTS screener_report_messages;
