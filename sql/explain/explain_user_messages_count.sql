-- name: explain_user_messages_count
-- How many messages of one user the attached archive holds, at any time: none means an unknown user id.
SELECT count(*) FROM screener_source WHERE user_id = $user_id;
