-- name: database_size
-- Block size and blocks in use of the open database file, as its header records them, to tell a truncated file.
SELECT block_size, used_blocks FROM pragma_database_size() WHERE database_name = current_database();
