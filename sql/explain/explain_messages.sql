-- name: explain_messages
-- One user's messages up to the run's as-of time, newest first, with the model's P(negative) where it scored them.
SELECT s.message_id, s.sent_at, sc.p_negative
FROM screener_source s
LEFT JOIN screener_scores sc ON sc.message_id = s.message_id AND sc.model_id = $model_id
WHERE s.user_id = $user_id AND s.sent_at IS NOT NULL AND s.sent_at <= $as_of
ORDER BY s.sent_at DESC, s.message_id;
