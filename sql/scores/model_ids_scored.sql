-- name: model_ids_scored
-- Model ids that already have scores, with counts, to tell the user when a model change leaves old scores unused.
SELECT model_id, count(*) AS n FROM screener_scores GROUP BY model_id ORDER BY n DESC;
