-- name: table_columns
-- Lists the columns and types of one table or view, named by catalog, schema and name, to check the input columns.
SELECT column_name, data_type
FROM information_schema.columns
WHERE table_catalog = $catalog AND table_schema = $schema AND table_name = $table
ORDER BY ordinal_position;
