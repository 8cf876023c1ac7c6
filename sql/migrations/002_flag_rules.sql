-- name: 002_flag_rules
-- Schema version 2: each flag records the rule that matched and a reason; flags of version 1 get the rule it applied.
ALTER TABLE screener_flags ADD COLUMN rule VARCHAR;
ALTER TABLE screener_flags ADD COLUMN reason VARCHAR;
-- Version 1 had a single rule, the one now named high_negative_share; its reason is rebuilt from the flag's counts
-- and the settings recorded with its run, in the words sql/rules/high_negative_share.sql uses.
UPDATE screener_flags f SET
    rule = 'high_negative_share',
    reason = printf('%d of %d messages in the last %d days negative (%.0f%%), '
                    || 'threshold %.0f%% with at least %d messages',
                    f.n_negative, f.n_messages,
                    CAST(json_extract(r.config, '$.short_window_days') AS BIGINT),
                    100 * f.ratio,
                    100 * CAST(json_extract(r.config, '$.min_ratio') AS DOUBLE),
                    CAST(json_extract(r.config, '$.min_messages') AS BIGINT))
FROM screener_runs r
WHERE r.run_id = f.run_id;
UPDATE screener_flags SET rule = 'high_negative_share' WHERE rule IS NULL;
ALTER TABLE screener_flags ALTER COLUMN rule SET NOT NULL;
