"""The flat per-user records of the CSV and JSON formats: one per flagged user, the same keys in the same order."""

from __future__ import annotations


def long_window(user: dict, days: int) -> dict | None:
    """The user's window of ``days`` days, or None when the data has none."""
    for window in user["windows"]:
        if window["days"] == days:
            return window
    return None


def top_evidence(user: dict) -> dict | None:
    """The user's most negative evidence message, or None."""
    evidence = user["evidence"]
    if not evidence:
        return None
    return max(evidence, key=lambda item: item["p_negative"])


def row_keys(long_days: int) -> list[str]:
    """Column names of the CSV and keys of the JSON ``flagged`` objects, in order. The long-window ratio's name
    follows the settings (``ratio_30d`` with the default windows)."""
    return [
        "rank", "user_id", "n_messages", "n_negative", "ratio", "wilson_lower", f"ratio_{long_days}d",
        "ratio_last_n", "baseline_ratio", "escalating", "first_flagged", "top_evidence_message_id",
        "top_evidence_p_negative", "rule", "reason", "state",
    ]


def flagged_rows(data: dict) -> list[dict]:
    """One flat record per flagged user (``ratio``, ``n_messages`` and ``n_negative`` are the flag window's)."""
    long_days = max(data["settings"]["windows_days"])
    rows = []
    for user in data["flagged"]:
        window = long_window(user, long_days)
        top = top_evidence(user)
        values = [
            user["rank"], user["user_id"], user["n_messages"], user["n_negative"], user["ratio"],
            user["wilson_lower"], window["ratio"] if window else None, user["last_n"]["ratio"],
            user["baseline_ratio"], user["escalating"], user["first_flagged"],
            top["message_id"] if top else None, top["p_negative"] if top else None,
            user["rule"], user["reason"], user["state"],
        ]
        rows.append(dict(zip(row_keys(long_days), values)))
    return rows
