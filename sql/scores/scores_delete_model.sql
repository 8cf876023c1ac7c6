-- name: scores_delete_model
-- Deletes a model's scores, for an explicit --rescore.
DELETE FROM screener_scores WHERE model_id = $model_id;
