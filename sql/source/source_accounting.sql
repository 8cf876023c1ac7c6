-- name: source_accounting
-- Sorts every archive row into one category and one reason, by priority, so the counts add up to the archive's rows.
-- Not scored: no message id, a later copy of an id (the view keeps the first), a skip record (blank text), or not
-- scored yet. Scored: then not aggregated (no user id, else no time, else after as_of) or aggregated.
WITH kept AS (
    SELECT
        s.user_id,
        s.sent_at,
        sc.message_id IS NOT NULL AS scored,
        k.reason AS skip_reason
    FROM screener_source s
    LEFT JOIN (SELECT DISTINCT message_id FROM screener_scores WHERE model_id = $model_id) sc
        ON sc.message_id = s.message_id
    LEFT JOIN (SELECT message_id, min(reason) AS reason FROM screener_skipped WHERE model_id = $model_id
               GROUP BY message_id) k
        ON k.message_id = s.message_id
),
sorted AS (
    SELECT
        CASE WHEN scored THEN 'scored' ELSE 'not_scored' END AS category,
        CASE
            WHEN NOT scored THEN coalesce(skip_reason, 'not_scored_yet')
            WHEN user_id IS NULL THEN 'null_user_id'
            WHEN sent_at IS NULL THEN 'null_sent_at'
            WHEN sent_at > $as_of THEN 'after_as_of'
            ELSE 'aggregated'
        END AS reason
    FROM kept
)
SELECT category, reason, count(*) AS n FROM sorted GROUP BY category, reason
UNION ALL
SELECT 'not_scored', 'null_message_id', count(*) FILTER (WHERE CAST({message_id} AS VARCHAR) IS NULL) FROM {table}
UNION ALL
SELECT 'not_scored', 'duplicate_message_id',
       count(CAST({message_id} AS VARCHAR)) - count(DISTINCT CAST({message_id} AS VARCHAR))
FROM {table};
