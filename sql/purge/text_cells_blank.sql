-- name: text_cells_blank
-- Replaces the given cells of a free-text column by a fixed marker: they named or quoted an erased person.
UPDATE {table} SET {text} = $marker WHERE list_contains($rowids, rowid);
