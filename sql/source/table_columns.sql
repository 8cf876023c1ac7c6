-- name: table_columns
-- Lists a table's or view's columns and their types, to validate the configured input columns.
SELECT column_name, data_type
FROM information_schema.columns
WHERE table_name = $table
ORDER BY ordinal_position;
