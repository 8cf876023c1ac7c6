-- name: schema_version_get
-- Reads the schema version recorded in screener_meta (no row on a database screener has not written yet).
SELECT value FROM screener_meta WHERE key = 'schema_version';
