-- name: schema_version_set
-- Records the schema version of a newly created result schema.
INSERT INTO screener_meta (key, value) VALUES ('schema_version', $version);
