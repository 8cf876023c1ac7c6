-- name: buffer_memory
-- DuckDB's memory in use, and the part that holds cached blocks of persistent tables (evictable: they are on disk).
SELECT coalesce(sum(memory_usage_bytes), 0) AS used,
       coalesce(sum(memory_usage_bytes) FILTER (WHERE tag = 'BASE_TABLE'), 0) AS cached
FROM duckdb_memory();
