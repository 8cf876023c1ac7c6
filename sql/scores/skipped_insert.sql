-- name: skipped_insert
-- Records messages that cannot be scored (empty or blank text) so they are counted once and not re-read.
INSERT INTO screener_skipped BY NAME SELECT * FROM screener_batch_skipped;
