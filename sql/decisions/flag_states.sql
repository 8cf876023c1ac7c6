-- name: flag_states
-- The review state of each flag of run $run_id as of $as_of, from the user's latest decision (see screener.states).
-- escalated: the latest decision escalated. snoozed: a snooze until after $as_of. handled: one of
-- $handled_actions less than $handled_days days before $as_of, while the flag-window share stays below the share
-- at the decision plus $handled_margin. Otherwise returning when an earlier completed run flagged the user, else new.
WITH flagged AS (
    SELECT f.user_id, f.rank, f.ratio, EXISTS (
        SELECT 1
        FROM screener_flags e
        JOIN screener_runs r ON r.run_id = e.run_id AND r.status = 'completed'
        WHERE e.user_id = f.user_id AND e.run_id < f.run_id
    ) AS flagged_before
    FROM screener_flags f
    WHERE f.run_id = $run_id
),
latest AS (
    SELECT d.user_id, d.action, d.decided_at, d.flag_share, d.snooze_until
    FROM screener_decisions d
    SEMI JOIN flagged ON flagged.user_id = d.user_id
    QUALIFY row_number() OVER (PARTITION BY d.user_id ORDER BY d.decided_at DESC, d.id DESC) = 1
)
SELECT
    f.user_id,
    f.rank,
    CASE
        WHEN l.action = $escalated_action THEN 'escalated'
        WHEN l.action = $snooze_action AND CAST($as_of AS TIMESTAMPTZ) < l.snooze_until THEN 'snoozed'
        WHEN list_contains($handled_actions, l.action)
             AND CAST($as_of AS TIMESTAMPTZ) < l.decided_at + to_days(CAST($handled_days AS INTEGER))
             AND (l.flag_share IS NULL OR f.ratio < l.flag_share + $handled_margin) THEN 'handled'
        WHEN f.flagged_before THEN 'returning'
        ELSE 'new'
    END AS state
FROM flagged f
LEFT JOIN latest l ON l.user_id = f.user_id
ORDER BY f.rank;
