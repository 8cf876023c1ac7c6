-- name: retention_horizon_get
-- The retention horizon: scans never score messages sent before it (no row until a retention purge ran).
SELECT value FROM screener_meta WHERE key = 'retention_horizon';
