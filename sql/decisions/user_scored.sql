-- name: user_scored
-- Whether the archive holds a scored message of $user_id (any model): a user screener has seen.
SELECT EXISTS (
    SELECT 1
    FROM screener_source s
    JOIN screener_scores sc ON sc.message_id = s.message_id
    WHERE s.user_id = $user_id
);
