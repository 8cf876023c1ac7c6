-- name: skipped_count
-- Messages skipped for the model, by reason.
SELECT reason, count(*) FROM screener_skipped WHERE model_id = $model_id GROUP BY reason ORDER BY reason;
