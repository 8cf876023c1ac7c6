-- name: explain_source_view
-- Points screener_source at that one user's rows; user_stats then computes exactly that user's statistics.
CREATE OR REPLACE TEMP VIEW screener_source AS SELECT * FROM screener_explain_source;
