-- name: source_id_hashes
-- The hash of every archive row's message id, streamed, from which the scan finds the ids that occur more than once.
SELECT hash(message_id) AS h FROM screener_source_rows;
