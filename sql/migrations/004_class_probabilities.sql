-- name: 004_class_probabilities
-- Schema version 4: scores keep P(neutral) and P(positive) beside P(negative); earlier scores came from binary models.
-- A binary model scores negative against the rest, so an earlier score's P(positive) is 1 - P(negative) and it has
-- no P(neutral); its stored label (negative or positive) already names its top class.
ALTER TABLE screener_scores ADD COLUMN p_neutral FLOAT;
ALTER TABLE screener_scores ADD COLUMN p_positive FLOAT;
UPDATE screener_scores SET p_positive = 1 - p_negative;
