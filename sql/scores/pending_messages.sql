-- name: pending_messages
-- Streams the messages that have neither a score nor a skip record for the model: the work of this scan.
SELECT s.message_id, s.text
FROM screener_source_candidates s
WHERE NOT EXISTS (
        SELECT 1 FROM screener_scores sc WHERE sc.model_id = $model_id AND sc.message_id = s.message_id)
  AND NOT EXISTS (
        SELECT 1 FROM screener_skipped k WHERE k.model_id = $model_id AND k.message_id = s.message_id)
  -- Messages sent before the retention horizon of `screener purge --older-than` stay unscored.
  AND NOT coalesce(s.sent_at < (
        SELECT CAST(value AS TIMESTAMPTZ) FROM screener_meta WHERE key = 'retention_horizon'), false);
