-- name: explain_source_narrow
-- Copies one user's archive rows into a temp table, so the flag statements can be run for that user alone.
CREATE OR REPLACE TEMP TABLE screener_explain_source AS
SELECT message_id, user_id, sent_at, text FROM screener_source WHERE user_id = $user_id;
