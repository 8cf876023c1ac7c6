-- name: scores_insert
-- Appends one window of scores from the registered Arrow batch screener_batch_scores.
INSERT INTO screener_scores BY NAME SELECT * FROM screener_batch_scores;
