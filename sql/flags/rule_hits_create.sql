-- name: rule_hits_create
-- An empty table for the users each flag rule of sql/rules/ matches, with the rule's priority and reason.
CREATE OR REPLACE TEMP TABLE screener_rule_hits (
    rule VARCHAR NOT NULL,
    priority INTEGER NOT NULL,
    user_id VARCHAR NOT NULL,
    reason VARCHAR NOT NULL
);
