-- name: compact_attach_original
-- Attaches the results database read-only as the source of a compacting copy (keeps writers out meanwhile).
ATTACH $path AS screener_original (READ_ONLY);
