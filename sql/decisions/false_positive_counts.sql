-- name: false_positive_counts
-- Of the flags of model $model_id that have a decision, how many the latest decision marks $false_positive.
WITH answered AS (
    SELECT action
    FROM screener_decisions
    WHERE model_id = $model_id AND run_id IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY run_id, user_id ORDER BY decided_at DESC, id DESC) = 1
)
SELECT count(*) AS decided, count(*) FILTER (WHERE action = $false_positive) AS false_positive
FROM answered;
