-- name: table_candidates
-- Tables and views that the configured table name may mean, in every catalog and schema, DuckDB's search order first.
SELECT table_catalog, table_schema, table_name,
       (table_catalog = 'temp' AND table_schema = 'main')
           OR (table_catalog = current_database() AND table_schema = current_schema()) AS on_search_path,
       table_catalog = current_database() AS in_current_catalog
FROM information_schema.tables
WHERE table_name IN ($name, $last)
ORDER BY on_search_path DESC, table_catalog = 'temp' DESC, in_current_catalog DESC, table_catalog, table_schema;
