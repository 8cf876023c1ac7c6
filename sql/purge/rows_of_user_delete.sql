-- name: rows_of_user_delete
-- Deletes one user's rows from a screener table with a user column; returns how many.
DELETE FROM {table} WHERE {user_id} = $user_id;
