-- name: session_setup
-- Every connection works in UTC, so naive timestamps are read as UTC and days are UTC days.
SET TimeZone = 'UTC';
