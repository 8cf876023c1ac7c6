-- name: retention_horizon_set
-- Moves the retention horizon to $horizon (an ISO time), so later scans leave the purged messages unscored.
INSERT OR REPLACE INTO screener_meta (key, value) VALUES ('retention_horizon', $horizon);
