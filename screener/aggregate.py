"""Per-user window statistics, the flags the rules give and the data the report shows, all computed by SQL in
``sql/``."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from screener import rules, states
from screener.settings import Settings
from screener.store import Store

# The users a report shows (all flagged users, or one page of them); the report statements in sql/report/ and
# sql/decisions/ read it.
REPORT_USERS_VIEW = "screener_report_users"


def stats_params(settings: Settings, model_id: str, as_of: datetime) -> dict[str, Any]:
    return {
        "as_of": as_of,
        "model_id": model_id,
        "threshold": settings.negative_threshold,
        "short_days": settings.short_window_days,
        "long_days": settings.long_window_days,
        "baseline_days": settings.baseline_days,
        "baseline_min_messages": settings.baseline_min_messages,
        "last_n": settings.last_n,
        "z": settings.confidence_z,
        "escalation_delta": settings.escalation_delta,
    }


def compute_user_stats(store: Store, settings: Settings, model_id: str, as_of: datetime) -> None:
    """Fill the temp tables ``screener_user_stats`` (all users with scored messages up to ``as_of``) and
    ``screener_rule_hits`` (the users each flag rule matches)."""
    store.run("user_stats", stats_params(settings, model_id, as_of))
    rules.evaluate(store, settings)


def store_flags(store: Store, run_id: int) -> tuple[int, int]:
    """Insert the run's flags from ``screener_user_stats`` and ``screener_rule_hits``; returns (users seen, users
    flagged)."""
    store.run("flags_insert", {"run_id": run_id})
    return int(store.scalar("users_seen")), int(store.scalar("flags_count", {"run_id": run_id}))


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def _age_hours(as_of: datetime, newest: datetime | None) -> float | None:
    if newest is None:
        return None
    return round((as_of - newest).total_seconds() / 3600, 1)


def _rows(cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def run_record(store: Store, run_id: int) -> dict[str, Any]:
    rows = _rows(store.run("run_get", {"run_id": run_id}))
    if not rows:
        raise KeyError(run_id)
    return rows[0]


def flags(store: Store, run_id: int) -> list[dict[str, Any]]:
    return _rows(store.run("flags_for_run", {"run_id": run_id}))


def run_settings(run: dict[str, Any]) -> Settings:
    """The settings a run recorded; settings added since then take their defaults."""
    return Settings(**json.loads(run["config"]))


def flag_states(store: Store, run_id: int) -> dict[str, str]:
    """The review state of each of the run's flagged users (see :mod:`screener.states`), by user id."""
    run = run_record(store, run_id)
    rows = states.flag_states(store, run_id, run_settings(run), run["as_of"])
    return {user_id: state for user_id, _, state in rows}


def flags_json(store: Store, run_id: int) -> list[dict[str, Any]]:
    """The ``screener flags --json`` objects."""
    state_of = flag_states(store, run_id)
    out = []
    for f in flags(store, run_id):
        out.append({
            "rank": f["rank"], "user_id": f["user_id"], "n_messages": f["n_messages"],
            "n_negative": f["n_negative"], "ratio": f["ratio"], "wilson_lower": f["wilson_lower"],
            "ratio_long": f["ratio_long"], "ratio_last_n": f["ratio_last"], "baseline_ratio": f["baseline_ratio"],
            "escalating": f["escalating"], "first_flagged": _iso(f["first_flagged"]),
            "rule": f["rule"], "reason": f["reason"], "state": state_of[f["user_id"]],
        })
    return out


def _page(ordered: list[str], page: int | None, page_size: int) -> tuple[list[str], dict | None]:
    """The users one page shows, from ``ordered`` (the report's order), and where the page stands."""
    if page is None:
        return ordered, None
    pages = max(1, math.ceil(len(ordered) / page_size))
    number = min(max(page, 1), pages)
    shown = ordered[(number - 1) * page_size: number * page_size]
    return shown, {"number": number, "size": page_size, "pages": pages, "total": len(ordered)}


def _decision(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": int(row["id"]), "action": row["action"], "note": row["note"], "reviewer": row["reviewer"],
            "decided_at": _iso(row["decided_at"]), "run_id": row["run_id"],
            "snooze_until": _iso(row["snooze_until"]) if row["snooze_until"] is not None else None}


def report_data(store: Store, run_id: int, generated_at: datetime | None = None, page: int | None = None,
                page_size: int = 50) -> dict[str, Any]:
    """Everything the report shows for one run, as plain JSON-serialisable values: every flagged user, or with
    ``page`` only the ``page_size`` users of that page (1-based; users in the report's order of states, then rank)."""
    run = run_record(store, run_id)
    s = run_settings(run)
    as_of = run["as_of"]
    model_id = run["model_id"]
    state_rows = states.flag_states(store, run_id, s, as_of)
    state_of = {user_id: state for user_id, _, state in state_rows}
    ordered = [user_id for user_id, _, _ in sorted(state_rows, key=lambda f: (states.group_order(f[2]), f[1]))]
    shown, page_info = _page(ordered, page, page_size)
    counts = Counter(state_of.values())
    store.con.register(REPORT_USERS_VIEW, pa.table({"user_id": pa.array(shown, pa.string())}))
    try:
        flagged = _rows(store.run("flags_of_report_users", {"run_id": run_id}))
        daily, evidence, earlier, history = _report_rows(store, run_id, model_id, as_of, s)
    finally:
        store.con.unregister(REPORT_USERS_VIEW)
    users = []
    for f in flagged:
        uid = f["user_id"]
        users.append({
            "rank": int(f["rank"]), "user_id": uid,
            "n_messages": int(f["n_messages"]), "n_negative": int(f["n_negative"]),
            "ratio": float(f["ratio"]), "wilson_lower": float(f["wilson_lower"]),
            "windows": [
                {"days": s.short_window_days, "n": int(f["n_messages"]), "neg": int(f["n_negative"]),
                 "ratio": float(f["ratio"])},
                {"days": s.long_window_days, "n": int(f["n_long"]), "neg": int(f["neg_long"]),
                 "ratio": f["ratio_long"]},
            ],
            "last_n": {"n": int(f["n_last"]), "neg": int(f["neg_last"]), "ratio": f["ratio_last"]},
            "baseline_ratio": f["baseline_ratio"],
            "escalating": bool(f["escalating"]),
            "rule": f["rule"], "reason": f["reason"],
            "first_flagged": _iso(f["first_flagged"])[:10],
            "earlier_flags": sorted(set(earlier.get(uid, []))),
            "daily": daily.get(uid, []),
            "evidence": evidence.get(uid, []),
            "state": state_of[uid],
            "decisions": history.get(uid, []),
        })
    return {
        "generated_at": _iso(generated_at or datetime.now(timezone.utc)),
        "run": {
            "id": int(run["run_id"]), "started_at": _iso(run["started_at"]), "finished_at": _iso(run["finished_at"]),
            "status": run["status"], "as_of": _iso(as_of), "model_name": run["model_name"], "model_id": model_id,
            "messages_scored": int(run["messages_scored"] or 0), "messages_total": int(run["messages_total"] or 0),
            "messages_skipped": int(run["messages_skipped"] or 0),
            "skipped_by_reason": json.loads(run["skipped_by_reason"] or "{}"),
            # None for runs recorded before rows were sorted into one reason each (and for failed runs).
            "messages_with_score": _count(run["messages_with_score"]),
            "messages_not_aggregated": _count(run["messages_not_aggregated"]),
            "not_aggregated_by_reason": json.loads(run["not_aggregated_by_reason"] or "{}"),
            "users_seen": int(run["users_seen"] or 0), "users_flagged": int(run["users_flagged"] or 0),
            "seconds": float(run["seconds"] or 0.0),
            "false_positive": states.false_positive_rate(store, model_id),
            "newest_message_at": _iso(run["newest_message_at"]),
            "newest_message_age_hours": _age_hours(as_of, run["newest_message_at"]),
            "messages_new": _count(run["messages_new"]),
            "messages_in_window": _count(run["messages_in_window"]),
            "freshness": run["freshness"],
        },
        "settings": {
            "windows_days": [s.short_window_days, s.long_window_days],
            "last_n": s.last_n,
            "flag_window_days": s.short_window_days,
            "min_ratio": s.min_ratio,
            "min_messages": s.min_messages,
            "confidence_z": s.confidence_z,
            "baseline_days": s.baseline_days,
            "escalation_delta": s.escalation_delta,
            "negative_threshold": s.negative_threshold,
            "freshness_warn_hours": s.freshness_warn_hours,
            "freshness_error_hours": s.freshness_error_hours,
            "rules": rules.describe(s),
            "handled_margin": s.handled_margin,
            "handled_days": s.handled_days,
        },
        "groups": [{"state": state, "count": counts[state], "collapsed": state in states.COLLAPSED_STATES}
                   for state in states.STATES if counts[state]],
        "page": page_info,
        "flagged": users,
    }


def _report_rows(store: Store, run_id: int, model_id: str, as_of: datetime, s: Settings) -> tuple[dict, ...]:
    """Daily series, evidence, earlier flags and decision history of the users in ``REPORT_USERS_VIEW``."""
    days = max(s.chart_days, s.long_window_days)
    store.run("report_messages", {"model_id": model_id, "as_of": as_of})
    try:
        daily_rows = _rows(store.run("daily_series", {"as_of": as_of, "days": days,
                                                      "threshold": s.negative_threshold}))
        evidence_rows = _rows(store.run("evidence", {"as_of": as_of, "short_days": s.short_window_days,
                                                     "per_user": s.evidence_per_user,
                                                     "threshold": s.negative_threshold}))
    finally:
        store.run("report_messages_drop")
    daily: dict[str, list] = defaultdict(list)
    for r in daily_rows:
        daily[r["user_id"]].append({"day": r["day"].isoformat(), "n": int(r["n"]), "neg": int(r["neg"]),
                                    "ratio": (r["neg"] / r["n"]) if r["n"] else None})
    evidence: dict[str, list] = defaultdict(list)
    for r in evidence_rows:
        evidence[r["user_id"]].append({"message_id": r["message_id"], "sent_at": _iso(r["sent_at"]),
                                       "p_negative": float(r["p_negative"]), "label": r["label"],
                                       "text": r["text"]})
    earlier: dict[str, list] = defaultdict(list)
    for r in _rows(store.run("earlier_flags", {"run_id": run_id})):
        earlier[r["user_id"]].append(_iso(r["as_of"])[:10])
    history: dict[str, list] = defaultdict(list)
    for r in _rows(store.run("decisions_of_report_users")):
        history[r["user_id"]].append(_decision(r))
    return daily, evidence, earlier, history
