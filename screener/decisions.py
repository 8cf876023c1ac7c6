"""Decisions: what support staff did about a user, appended to ``screener_decisions`` and never changed afterwards.

A decision names a user screener knows (flagged by some run, or with a scored message in the archive), one of
:data:`screener.states.ACTIONS`, the reviewer and when. It answers the user's flag in the latest completed run that
flagged them, whose model and flag-window share it keeps (see :mod:`screener.states` for what each action does to
later flags). Anything wrong with a decision is refused before the database is written.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from screener import runs
from screener.errors import ReviewError
from screener.renderers.csv_table import cell
from screener.settings import Settings
from screener.states import ACTIONS, NOTE_MAX_CHARS, REVIEWER_MAX_CHARS, SNOOZE_ACTION
from screener.store import Store

COLUMNS = ("id", "decided_at", "user_id", "action", "reviewer", "snooze_until", "run_id", "note")

_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")


def default_reviewer() -> str:
    """The login name of whoever runs screener, or ``unknown`` where the system has none."""
    try:
        return getpass.getuser() or "unknown"
    except (OSError, KeyError):
        return "unknown"


def parse_until(text: str) -> datetime:
    """A snooze's end: a date means 00:00 UTC of that day; an ISO time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReviewError(f"--until expects a date such as 2026-03-15 or an ISO time, got {text!r}") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _check(user_id: str, action: str, note: str | None, reviewer: str, until: datetime | None,
           at: datetime) -> None:
    if action not in ACTIONS:
        raise ReviewError(f"unknown action {action!r}: expected one of {', '.join(ACTIONS)}")
    if not user_id:
        raise ReviewError("the user id is empty")
    if action == SNOOZE_ACTION:
        if until is None:
            raise ReviewError("a snooze needs --until DATE: the day the user may be raised again")
        if until <= at:
            raise ReviewError(f"--until {until.isoformat()} is not after the decision's time {at.isoformat()}")
    elif until is not None:
        raise ReviewError(f"--until only applies to snooze, not to {action}")
    if note is not None and len(note) > NOTE_MAX_CHARS:
        raise ReviewError(f"the note has {len(note)} characters; at most {NOTE_MAX_CHARS} are kept")
    if not reviewer.strip() or len(reviewer) > REVIEWER_MAX_CHARS:
        raise ReviewError(f"the reviewer name must have 1 to {REVIEWER_MAX_CHARS} characters, got {reviewer!r}")


def _seen(store: Store, user_id: str) -> bool:
    """Whether the archive of the latest completed run holds a scored message of the user."""
    run_id = store.scalar("run_latest")
    if run_id is None:
        return False
    runs.attach_run_source(store, run_id)
    return bool(store.scalar("user_scored", {"user_id": user_id}))


def record(db: str | Path, user_id: str, action: str, *, note: str | None = None, reviewer: str | None = None,
           until: datetime | None = None, at: datetime | None = None) -> dict[str, Any]:
    """Append one decision and return it as :func:`list_decisions` does. ``at`` is the decision's time (default:
    now); a snooze's ``until`` must be after it."""
    at = _utc(at or datetime.now(timezone.utc))
    until = _utc(until) if until is not None else None
    note = note if note else None
    reviewer = default_reviewer() if reviewer is None else reviewer
    _check(user_id, action, note, reviewer, until, at)
    path = Path(db)
    with runs.open_results(path, "run `screener scan` on it first") as store:
        answered = store.run("decision_flag_answered", {"user_id": user_id}).fetchone()
        if answered is None and not _seen(store, user_id):
            raise ReviewError(
                f"no user {user_id!r} in {path}: no run flagged them and the archive has no scored message of "
                f"theirs. Check the id; `screener flags {path}` lists the flagged users."
            )
        run_id, model_id, share = answered if answered is not None else (None, None, None)
        new_id = store.scalar("decision_insert", {
            "user_id": user_id, "action": action, "note": note, "reviewer": reviewer, "decided_at": at,
            "run_id": run_id, "model_id": model_id, "flag_share": share, "snooze_until": until,
        })
    return {"id": int(new_id), "decided_at": at.isoformat(), "user_id": user_id, "action": action,
            "reviewer": reviewer, "snooze_until": until.isoformat() if until else None, "run_id": run_id,
            "note": note}


def list_decisions(db: str | Path, user_id: str | None = None) -> list[dict[str, Any]]:
    """Every decision (or those on ``user_id``), newest first, with the keys of :data:`COLUMNS`."""
    with Store(db, Settings(), read_only=True) as store:
        store.ensure_schema()
        cursor = store.run("decisions_list", {"user_id": user_id})
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    out = []
    for r in rows:
        out.append({
            "id": int(r["id"]), "decided_at": _utc(r["decided_at"]).isoformat(), "user_id": r["user_id"],
            "action": r["action"], "reviewer": r["reviewer"],
            "snooze_until": _utc(r["snooze_until"]).isoformat() if r["snooze_until"] is not None else None,
            "run_id": r["run_id"], "note": r["note"],
        })
    return out


def _visible(value: Any) -> str:
    """A table cell on one line: control characters (newlines, tabs) written as escapes."""
    if value is None:
        return "-"
    return _CONTROL_CHARS.sub(lambda m: repr(m.group(0))[1:-1], str(value))


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """The decisions as a tab-separated ``table`` with a header, a ``json`` array or ``csv``."""
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([cell(row[key]) for key in COLUMNS])
        return buffer.getvalue()
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(_visible(row[key]) for key in COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"
