-- name: decisions_of_report_users
-- The decision history of the users the report shows (the screener_report_users view), newest first per user.
SELECT d.id, d.user_id, d.action, d.note, d.reviewer, d.decided_at, d.run_id, d.snooze_until
FROM screener_decisions d
JOIN screener_report_users u ON u.user_id = d.user_id
ORDER BY d.user_id, d.decided_at DESC, d.id DESC;
