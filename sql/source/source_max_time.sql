-- name: source_max_time
-- The newest message time in the archive; the demo computes its windows as of just after it.
SELECT max(sent_at) FROM screener_source;
