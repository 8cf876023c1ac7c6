-- name: compact_detach_copy
-- Detaches the new file, which writes it out completely.
DETACH screener_compacted;
