-- name: pending_count
-- Counts the messages a scan will read (the rows pending_messages streams), for the progress bar's total and ETA.
SELECT count(*)
FROM screener_source_candidates s
WHERE NOT EXISTS (
        SELECT 1 FROM screener_scores sc WHERE sc.model_id = $model_id AND sc.message_id = s.message_id)
  AND NOT EXISTS (
        SELECT 1 FROM screener_skipped k WHERE k.model_id = $model_id AND k.message_id = s.message_id)
  -- Messages sent before the retention horizon of `screener purge --older-than` stay unscored.
  AND NOT coalesce(s.sent_at < (
        SELECT CAST(value AS TIMESTAMPTZ) FROM screener_meta WHERE key = 'retention_horizon'), false);
