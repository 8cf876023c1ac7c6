-- name: erasure_by_request
-- The tombstone of an erasure request already carried out, if any.
SELECT erasure_id, kind, request_id, erased_at, cutoff, removed, source_messages_left
FROM screener_erasures WHERE request_id = $request_id;
