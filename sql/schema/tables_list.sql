-- name: tables_list
-- Lists the tables and views of the open database, for error messages that name what was found.
SELECT table_name FROM information_schema.tables ORDER BY table_name;
