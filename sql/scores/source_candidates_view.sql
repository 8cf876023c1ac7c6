-- name: source_candidates_view
-- The source view's rows, read so that they stream: the rows of ids in screener_duplicate_ids (hashes of the ids
-- that occur more than once, registered by the store) go through the source view's rule, the earliest copy kept;
-- every other row is passed on as it is read, so memory does not grow with the archive as a window over all of it
-- would.
CREATE OR REPLACE TEMP VIEW screener_source_candidates AS
SELECT message_id, sent_at, text
FROM screener_source_rows
WHERE hash(message_id) NOT IN (SELECT h FROM screener_duplicate_ids)
UNION ALL
SELECT message_id, sent_at, text
FROM screener_source_rows
WHERE hash(message_id) IN (SELECT h FROM screener_duplicate_ids)
QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY sent_at NULLS LAST, text) = 1;
