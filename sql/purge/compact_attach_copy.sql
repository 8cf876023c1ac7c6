-- name: compact_attach_copy
-- Attaches the new file the compacting copy writes.
ATTACH $path AS screener_compacted;
