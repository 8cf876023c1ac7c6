-- name: archive_attach
-- Attaches the DuckDB archive read-only, so that a scan with a separate results database never writes to it.
ATTACH IF NOT EXISTS $path AS screener_archive (READ_ONLY);
