-- name: text_cells
-- The non-empty cells of one free-text column of a screener table, with their row ids, to look for quoted data.
SELECT rowid, {text} FROM {table} WHERE {text} IS NOT NULL AND {text} <> '';
