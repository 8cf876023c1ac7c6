-- name: 006_run_accounting
-- Schema version 6: each run records the kind of source it read, how the archive's rows add up and its freshness.
-- Rows of earlier runs keep NULL in the new columns: their counts cannot be sorted again after the fact.
ALTER TABLE screener_runs ADD COLUMN source_kind VARCHAR;
ALTER TABLE screener_runs ADD COLUMN messages_with_score BIGINT;
ALTER TABLE screener_runs ADD COLUMN messages_not_aggregated BIGINT;
ALTER TABLE screener_runs ADD COLUMN not_aggregated_by_reason VARCHAR;
ALTER TABLE screener_runs ADD COLUMN newest_message_at TIMESTAMPTZ;
ALTER TABLE screener_runs ADD COLUMN messages_new BIGINT;
ALTER TABLE screener_runs ADD COLUMN messages_in_window BIGINT;
ALTER TABLE screener_runs ADD COLUMN freshness VARCHAR;
