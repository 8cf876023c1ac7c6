-- name: retention_scores_delete
-- Deletes the scores of messages not kept by the retention purge (sent before the cutoff, or gone from the source).
DELETE FROM screener_scores sc
WHERE NOT EXISTS (SELECT 1 FROM screener_purge_messages p WHERE p.message_id = sc.message_id);
