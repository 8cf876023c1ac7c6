-- name: 002_flag_rules
-- Schema version 2: each flag records the rule that matched and a reason; flags of version 1 get the rule it applied.
-- Version 1 had a single rule, the one now named high_negative_share: its flags get that name through the default,
-- which is dropped afterwards so that every later flag has to name its rule.
ALTER TABLE screener_flags ADD COLUMN rule VARCHAR NOT NULL DEFAULT 'high_negative_share';
ALTER TABLE screener_flags ADD COLUMN reason VARCHAR;
-- Their reason is rebuilt from the flag's counts and the settings recorded with its run, in the words of
-- sql/rules/high_negative_share.sql.
UPDATE screener_flags f SET
    reason = printf('%d of %d messages in the last %d days negative (%.0f%%), '
                    || 'threshold %.0f%% with at least %d messages',
                    f.n_negative, f.n_messages,
                    CAST(json_extract(r.config, '$.short_window_days') AS BIGINT),
                    100 * f.ratio,
                    100 * CAST(json_extract(r.config, '$.min_ratio') AS DOUBLE),
                    CAST(json_extract(r.config, '$.min_messages') AS BIGINT))
FROM screener_runs r
WHERE r.run_id = f.run_id;
ALTER TABLE screener_flags ALTER COLUMN rule DROP DEFAULT;
