-- name: source_freshness
-- The archive's newest message time, its messages in the flag window (as_of - short days, as_of], and its messages
-- newer than $since (the previous run's newest message time; every message when NULL).
SELECT
    max(sent_at) AS newest,
    count(*) FILTER (WHERE sent_at > $as_of - to_days(CAST($short_days AS INTEGER)) AND sent_at <= $as_of) AS in_window,
    count(*) FILTER (WHERE sent_at IS NOT NULL AND ($since IS NULL OR sent_at > $since)) AS new
FROM screener_source;
