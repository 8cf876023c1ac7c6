-- name: database_size
-- Block size and block count DuckDB's header records for the open database file, to tell a truncated file.
SELECT block_size, total_blocks FROM pragma_database_size() WHERE database_name = current_database();
