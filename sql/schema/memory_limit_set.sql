-- name: memory_limit_set
-- Sets DuckDB's memory limit; lowering it makes DuckDB evict cached blocks until it fits (or refuse).
SET memory_limit = $limit;
