-- name: result_columns
-- Every column of screener's own tables (base tables named screener_* in the open database), for erasure.
SELECT c.table_name, c.column_name, c.data_type
FROM information_schema.columns c
JOIN information_schema.tables t
  ON t.table_catalog = c.table_catalog AND t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_catalog = current_database() AND c.table_schema = 'main' AND t.table_type = 'BASE TABLE'
  AND starts_with(c.table_name, 'screener_')
ORDER BY c.table_name, c.ordinal_position;
