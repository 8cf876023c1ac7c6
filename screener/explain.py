"""Receipts: why one user was, or was not, flagged in a run, and whether the stored flag still follows from the
stored scores.

:func:`explain` reads the run record (model id, settings, as-of time), the flag the run stored for the user, and the
user's scored messages; then it runs the very statements the scan computes flags with (``user_stats``, every flag
rule and the priority of ``flags_insert``) on that user's archive rows alone, and compares what they give with the
stored flag. The statistics of one user depend on that user's messages only, so the recomputation is the scan's for
that user. It differs from the stored flag when the scores, the archive (a message added, changed or deleted
with a time up to the run's as-of time) or the statements changed since the run.

The SQL hashes are of the statement files of this release, the ones the recomputation ran; the run record does not
keep the hashes of the release that ran the scan.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

from screener import aggregate, queries, rules
from screener.errors import ConfigError, InputError
from screener.settings import FLAG_RULES, Settings
from screener.store import Store
from screener.text import visible

# The statements whose results make a flag, in the order the scan runs them.
FLAG_STATEMENTS = ("source_view", "user_stats", "rule_hits_create", *FLAG_RULES, "flags_insert")

# Stored flag columns and the recomputed user_stats columns they come from.
_COMPARED = {
    "n_messages": "n_short", "n_negative": "neg_short", "ratio": "ratio_short", "wilson_lower": "wilson_lower",
    "n_long": "n_long", "neg_long": "neg_long", "ratio_long": "ratio_long", "n_last": "n_last",
    "neg_last": "neg_last", "ratio_last": "ratio_last", "baseline_n": "baseline_n",
    "baseline_ratio": "baseline_ratio", "escalating": "escalating",
}
_TOLERANCE = 1e-9


def sql_hashes() -> list[dict[str, str]]:
    """Name, file and SHA-256 (of the text ``queries.load`` returns) of each statement that computes a flag."""
    shipped = queries.statements(queries.sql_root())
    return [{"name": name, "path": shipped[name].path,
             "sha256": hashlib.sha256(queries.load(name).encode("utf-8")).hexdigest()} for name in FLAG_STATEMENTS]


def _rows(cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=_TOLERANCE, abs_tol=_TOLERANCE)
    return a == b


def explain(store: Store, run_id: int, user_id: str) -> dict[str, Any]:
    """The receipt of one user in one run; ``store`` has the run's archive attached (see
    :func:`screener.runs.open_run`). An id with no message in the archive and no flag is a usage error."""
    try:
        record = aggregate.run_record(store, run_id)
    except KeyError:
        raise InputError(f"{store.path} has no run {run_id}") from None
    settings = Settings(**json.loads(record["config"]))
    as_of = _utc(record["as_of"])
    model_id = record["model_id"]
    stored_rows = _rows(store.run("explain_flag", {"run_id": run_id, "user_id": user_id}))
    known = int(store.scalar("explain_user_messages_count", {"user_id": user_id}))
    if not known and not stored_rows:
        raise ConfigError(f"user {user_id!r} has no message in the archive run {run_id} read "
                          f"({record['source']}) and no flag in that run: check the user id")
    messages = _messages(store, settings, model_id, as_of, user_id)
    stats, hits = _recompute(store, settings, model_id, as_of, user_id)
    stored = _flag_view(stored_rows[0]) if stored_rows else {"flagged": False}
    recomputed = _recomputed_view(stats, hits)
    differences = _differences(stored_rows[0] if stored_rows else None, stats, hits)
    short, long_, base = settings.short_window_days, settings.long_window_days, settings.baseline_days
    matched = {h["rule"]: h["reason"] for h in hits}
    return {
        "user_id": user_id,
        "run": {"id": int(run_id), "status": record["status"], "as_of": as_of.isoformat(),
                "model_name": record["model_name"], "model_id": model_id, "source": record["source"]},
        "settings": {name: getattr(settings, name) for name in (
            "negative_threshold", "short_window_days", "long_window_days", "last_n", "min_ratio", "min_lower_bound",
            "min_messages", "confidence_z", "baseline_days", "baseline_min_messages", "escalation_delta")},
        "windows": {
            "short": _window(as_of - timedelta(days=short), as_of, stats, "n_short", "neg_short", "ratio_short"),
            "long": _window(as_of - timedelta(days=long_), as_of, stats, "n_long", "neg_long", "ratio_long"),
            "baseline": _window(as_of - timedelta(days=short + base), as_of - timedelta(days=short), stats,
                                "baseline_n", None, "baseline_ratio"),
            "last_n": {"most": settings.last_n, "n": _stat(stats, "n_last", 0), "negative": _stat(stats, "neg_last", 0),
                       "ratio": _stat(stats, "ratio_last")},
        },
        "rules": [{**rule, "matched": rule["name"] in matched, "reason": matched.get(rule["name"])}
                  for rule in rules.describe(settings)],
        "stored": stored,
        "recomputed": recomputed,
        "matches": not differences,
        "differences": differences,
        "messages": [m for m in messages if m["windows"]],
        "messages_unscored": sum(1 for m in messages if m["p_negative"] is None),
        "sql": sql_hashes(),
    }


def _stat(stats: dict | None, name: str, default: Any = None) -> Any:
    return default if stats is None else _plain(stats[name])


def _window(start: datetime, end: datetime, stats: dict | None, n: str, neg: str | None, ratio: str) -> dict:
    out = {"start": start.isoformat(), "end": end.isoformat(), "n": _stat(stats, n, 0)}
    if neg is not None:
        out["negative"] = _stat(stats, neg, 0)
    out["ratio"] = _stat(stats, ratio)
    return out


def _messages(store: Store, settings: Settings, model_id: str, as_of: datetime, user_id: str) -> list[dict]:
    """The user's messages up to as_of, newest first, each with its score and the windows it counts in."""
    rows = _rows(store.run("explain_messages", {"user_id": user_id, "model_id": model_id, "as_of": as_of}))
    short_start = as_of - timedelta(days=settings.short_window_days)
    long_start = as_of - timedelta(days=settings.long_window_days)
    base_start = short_start - timedelta(days=settings.baseline_days)
    out = []
    scored_seen = 0
    for row in rows:
        sent = _utc(row["sent_at"])
        p = None if row["p_negative"] is None else float(row["p_negative"])
        windows = []
        if p is not None:
            scored_seen += 1
            if sent > short_start:
                windows.append("short")
            if sent > long_start:
                windows.append("long")
            if base_start < sent <= short_start:
                windows.append("baseline")
            if scored_seen <= settings.last_n:
                windows.append("last_n")
        out.append({"message_id": row["message_id"], "sent_at": sent.isoformat(), "p_negative": p,
                    "negative": None if p is None else p >= settings.negative_threshold, "windows": windows})
    return out


def _recompute(store: Store, settings: Settings, model_id: str, as_of: datetime,
               user_id: str) -> tuple[dict | None, list[dict]]:
    """Run the scan's flag statements on the user's archive rows alone; the full archive view is put back after."""
    source = store.source
    store.run("explain_source_narrow", {"user_id": user_id})
    store.run("explain_source_view")
    try:
        aggregate.compute_user_stats(store, settings, model_id, as_of)
        stats = _rows(store.run("explain_user_stats", {"user_id": user_id}))
        hits = _rows(store.run("explain_rule_hits", {"user_id": user_id}))
    finally:
        store.attach_source(source)
    return (stats[0] if stats else None), hits


def _flag_view(flag: dict) -> dict:
    out = {"flagged": True, "rank": int(flag["rank"]), "rule": flag["rule"], "reason": flag["reason"]}
    out.update({name: _plain(flag[name]) for name in _COMPARED})
    return out


def _recomputed_view(stats: dict | None, hits: list[dict]) -> dict:
    out: dict[str, Any] = {"flagged": bool(hits)}
    if hits:
        out.update({"rule": hits[0]["rule"], "reason": hits[0]["reason"]})
    if stats is not None:
        out.update({name: _plain(stats[column]) for name, column in _COMPARED.items()})
    return out


def _differences(flag: dict | None, stats: dict | None, hits: list[dict]) -> list[dict]:
    """Where the stored flag and the recomputation disagree. Without a stored flag only flagging itself counts:
    the run keeps no statistics of users it did not flag."""
    if flag is None:
        return [] if not hits else [{"field": "flagged", "stored": False, "recomputed": True}]
    if not hits:
        return [{"field": "flagged", "stored": True, "recomputed": False}]
    out = []
    pairs = {"rule": (flag["rule"], hits[0]["rule"]), "reason": (flag["reason"], hits[0]["reason"])}
    pairs.update({name: (_plain(flag[name]), _stat(stats, column)) for name, column in _COMPARED.items()})
    for name, (was, now) in pairs.items():
        if not _same(was, now):
            out.append({"field": name, "stored": was, "recomputed": now})
    return out


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def as_text(receipt: dict) -> str:
    """The receipt for a person: the verdict, the windows, the rules, the messages, the check and the SQL."""
    run, s, w = receipt["run"], receipt["settings"], receipt["windows"]
    stored, recomputed = receipt["stored"], receipt["recomputed"]
    lines = [f"user {visible(receipt['user_id'])} in run {run['id']} ({run['status']}), as of {run['as_of']}",
             f"model {visible(run['model_name'])} ({run['model_id']}); archive {visible(run['source'])}"]
    if stored["flagged"]:
        lines.append(f"FLAGGED, rank {stored['rank']}, by rule {stored['rule']}: {stored['reason']}")
    else:
        lines.append("not flagged: no flag rule matched")
    lines.append(f"a message counts as negative when P(negative) >= {s['negative_threshold']}")
    lines.append("windows (start excluded, end included):")
    for name, days in (("short", s["short_window_days"]), ("long", s["long_window_days"])):
        win = w[name]
        lines.append(f"  {name:8} {days:>3} days ({win['start']}, {win['end']}]: {win['negative']} of {win['n']} "
                     f"negative ({_pct(win['ratio'])})")
    base = w["baseline"]
    lines.append(f"  baseline {s['baseline_days']:>3} days ({base['start']}, {base['end']}]: {base['n']} messages, "
                 f"share {_pct(base['ratio'])} (needs {s['baseline_min_messages']} messages)")
    last = w["last_n"]
    lines.append(f"  last {last['most']} messages: {last['negative']} of {last['n']} negative ({_pct(last['ratio'])})")
    lines.append("rules:")
    for rule in receipt["rules"]:
        verdict = f"matched: {rule['reason']}" if rule["matched"] else "not matched"
        lines.append(f"  {rule['name']} ({rule['description']}): {verdict}")
    lines.append(f"messages counted ({len(receipt['messages'])}; {receipt['messages_unscored']} up to as-of "
                 "without a score from this model):")
    for m in receipt["messages"]:
        label = "negative" if m["negative"] else "positive"
        lines.append(f"  {visible(m['message_id'])}\t{m['sent_at']}\tP(negative) {m['p_negative']:.4f}\t{label}\t"
                     f"{','.join(m['windows'])}")
    if receipt["matches"]:
        verdict = "flagged" if recomputed["flagged"] else "not flagged"
        lines.append(f"recomputed from the stored scores: {verdict}, the same as the stored result")
    else:
        lines.append("recomputed from the stored scores: DIFFERENT from the stored result "
                     "(the scores, the archive or the statements changed since the run):")
        for d in receipt["differences"]:
            lines.append(f"  {d['field']}: stored {d['stored']!r}, recomputed {d['recomputed']!r}")
    lines.append("SQL (sha256 of the statements the recomputation ran):")
    for q in receipt["sql"]:
        lines.append(f"  {q['sha256']}  {q['path']}")
    return "\n".join(lines) + "\n"
