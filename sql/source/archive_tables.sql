-- name: archive_tables
-- The tables and views of the attached DuckDB archive, by schema, to find the messages table in it.
SELECT table_schema, table_name
FROM information_schema.tables
WHERE table_catalog = 'screener_archive'
ORDER BY table_schema, table_name;
