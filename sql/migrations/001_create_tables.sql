-- name: 001_create_tables
-- Schema version 1: screener's result tables (runs, scores, skipped messages, flags) and the meta table.
CREATE TABLE IF NOT EXISTS screener_meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS screener_runs (
    run_id BIGINT PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    status VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    model_name VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL,
    as_of TIMESTAMPTZ NOT NULL,
    messages_total BIGINT,
    messages_scored BIGINT,
    messages_skipped BIGINT,
    skipped_by_reason VARCHAR,
    users_seen BIGINT,
    users_flagged BIGINT,
    seconds DOUBLE,
    config VARCHAR NOT NULL,
    error VARCHAR
);
CREATE TABLE IF NOT EXISTS screener_scores (
    message_id VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL,
    p_negative FLOAT NOT NULL,
    label VARCHAR NOT NULL,
    scored_at TIMESTAMPTZ NOT NULL,
    run_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS screener_skipped (
    message_id VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    run_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS screener_flags (
    run_id BIGINT NOT NULL,
    user_id VARCHAR NOT NULL,
    rank INTEGER NOT NULL,
    n_messages BIGINT NOT NULL,
    n_negative BIGINT NOT NULL,
    ratio DOUBLE NOT NULL,
    wilson_lower DOUBLE NOT NULL,
    n_long BIGINT NOT NULL,
    neg_long BIGINT NOT NULL,
    ratio_long DOUBLE,
    n_last BIGINT NOT NULL,
    neg_last BIGINT NOT NULL,
    ratio_last DOUBLE,
    baseline_n BIGINT NOT NULL,
    baseline_ratio DOUBLE,
    escalating BOOLEAN NOT NULL
);
