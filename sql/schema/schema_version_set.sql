-- name: schema_version_set
-- Records the schema version the migrations brought the database to, replacing the one it had.
INSERT OR REPLACE INTO screener_meta (key, value) VALUES ('schema_version', $version);
