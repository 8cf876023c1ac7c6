-- name: explain_rule_hits
-- The flag rules the recomputation matched for one user, in priority order, with their reasons.
SELECT rule, priority, reason FROM screener_rule_hits WHERE user_id = $user_id ORDER BY priority;
