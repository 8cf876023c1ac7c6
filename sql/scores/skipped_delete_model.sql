-- name: skipped_delete_model
-- Deletes a model's skip records, for an explicit --rescore.
DELETE FROM screener_skipped WHERE model_id = $model_id;
