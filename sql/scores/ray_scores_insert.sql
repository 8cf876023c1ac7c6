-- name: ray_scores_insert
-- Loads one file of scores written by Ray workers, leaving out messages that already have a score for the model.
INSERT INTO screener_scores BY NAME
SELECT r.*
FROM screener_ray_scores r
WHERE r.model_id = $model_id
  AND NOT EXISTS (
        SELECT 1 FROM screener_scores sc WHERE sc.model_id = $model_id AND sc.message_id = r.message_id);
