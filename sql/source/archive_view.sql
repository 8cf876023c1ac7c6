-- name: archive_view
-- Temp view of the messages table of the attached archive (schema and table allow-listed from its catalogue).
CREATE OR REPLACE TEMP VIEW screener_archive_messages AS
SELECT * FROM screener_archive.{schema}.{table};
