-- name: erasure_insert
-- Records one erasure or retention purge: what kind, when, the request id or the cutoff, and the counts removed.
INSERT INTO screener_erasures (erasure_id, kind, request_id, erased_at, cutoff, removed, source_messages_left)
VALUES ($erasure_id, $kind, $request_id, $erased_at, $cutoff, $removed, $source_messages_left);
