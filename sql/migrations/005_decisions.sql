-- name: 005_decisions
-- Schema version 5: screener_decisions, what support staff did about a user; rows are only ever appended.
-- A decision answers the user's latest flag of a completed run (run_id, NULL when the user was never flagged); the
-- flag's model and flag-window share are copied in, so the handled rule and the false-positive rate do not depend
-- on flags that a retention period may have removed.
CREATE SEQUENCE IF NOT EXISTS screener_decisions_id START 1;
CREATE TABLE IF NOT EXISTS screener_decisions (
    id BIGINT PRIMARY KEY DEFAULT nextval('screener_decisions_id'),
    user_id VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    note VARCHAR,
    reviewer VARCHAR NOT NULL,
    decided_at TIMESTAMPTZ NOT NULL,
    run_id BIGINT,
    model_id VARCHAR,
    flag_share DOUBLE,
    snooze_until TIMESTAMPTZ
);
