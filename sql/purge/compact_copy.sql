-- name: compact_copy
-- Copies every table, view and row still present into the new file; deleted rows' bytes are left behind.
COPY FROM DATABASE screener_original TO screener_compacted;
