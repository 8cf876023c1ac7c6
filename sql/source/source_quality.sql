-- name: source_quality
-- Counts archive rows that aggregation cannot use, by reason, for the run record and the report.
SELECT
    count(*) AS total,
    count(*) FILTER (WHERE CAST({message_id} AS VARCHAR) IS NULL) AS null_message_id,
    count(CAST({message_id} AS VARCHAR)) - count(DISTINCT CAST({message_id} AS VARCHAR)) AS duplicate_message_id,
    count(*) FILTER (WHERE CAST({user_id} AS VARCHAR) IS NULL) AS null_user_id,
    count(*) FILTER (WHERE CAST({sent_at} AS TIMESTAMPTZ) IS NULL) AS null_sent_at,
    count(*) FILTER (WHERE CAST({sent_at} AS TIMESTAMPTZ) > $as_of) AS after_as_of
FROM {table};
