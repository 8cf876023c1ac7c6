-- name: session_setup
-- Every connection works in UTC (naive timestamps are read as UTC, days are UTC days) and knows the label rule.
SET TimeZone = 'UTC';
-- A score's label as of a run's threshold, the rule screener.runs.class_labels applies when it stores the label:
-- negative only when P(negative) is the largest class probability (a tie counts as negative) and reaches the
-- threshold, else the larger of neutral and positive (a tie counts as neutral). A binary model has no P(neutral);
-- a score without P(positive) is read as negative against the rest.
CREATE OR REPLACE TEMP MACRO screener_label(p_negative, p_neutral, p_positive, threshold) AS
    CASE
        WHEN p_negative >= threshold AND p_negative >= coalesce(p_neutral, 0)
             AND p_negative >= coalesce(p_positive, 1 - p_negative) THEN 'negative'
        WHEN coalesce(p_neutral, -1) >= coalesce(p_positive, 1 - p_negative) THEN 'neutral'
        ELSE 'positive'
    END;
