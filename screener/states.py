"""What support staff's decisions mean for a run's flags: each flag's review state, and each model's false-positive
rate.

States are computed when a run is read (report, ``screener flags``, ``screener serve``), not stored with the flag,
so a decision recorded after the nightly scan shows at once. The rules are those of ``sql/decisions/flag_states.sql``,
timed against the run's as-of time, with ``handled_margin`` and ``handled_days`` from the settings recorded with the
run, over every decision recorded so far. Only the user's latest decision counts:

- *escalated*: the latest decision is ``escalated``; it stays until someone decides again.
- *snoozed*: the latest decision is ``snooze`` and the run's as-of time is before its ``until``.
- *handled*: the latest decision is ``contacted``, ``no-action`` or ``false-positive`` (the reviewer judged the user
  needs nothing more), less than ``handled_days`` days before the as-of time, and the user's flag-window share is
  below the share of the flag the decision answered plus ``handled_margin``. A decision on a user who had never been
  flagged carries no share, so only the days apply.
- otherwise *returning* when an earlier completed run flagged the user too, else *new*.

The false-positive rate of a model: of the flags of its runs that have a decision, the share whose latest decision is
``false-positive``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from screener.settings import Settings

if TYPE_CHECKING:
    from screener.store import Store

ACTIONS = ("contacted", "no-action", "false-positive", "escalated", "snooze")
HANDLED_ACTIONS = ("contacted", "no-action", "false-positive")
ESCALATED_ACTION = "escalated"
SNOOZE_ACTION = "snooze"
FALSE_POSITIVE_ACTION = "false-positive"

# What a decision may carry.
NOTE_MAX_CHARS = 2000
REVIEWER_MAX_CHARS = 100

# In the report's order: what needs a person first.
STATES = ("new", "escalated", "returning", "handled", "snoozed")
COLLAPSED_STATES = ("handled", "snoozed")


def flag_states(store: Store, run_id: int, settings: Settings, as_of: datetime) -> list[tuple[str, int, str]]:
    """(user id, rank, state) of each of the run's flagged users, in rank order."""
    return store.run("flag_states", {
        "run_id": run_id, "as_of": as_of, "handled_actions": list(HANDLED_ACTIONS),
        "escalated_action": ESCALATED_ACTION, "snooze_action": SNOOZE_ACTION,
        "handled_days": settings.handled_days, "handled_margin": settings.handled_margin,
    }).fetchall()


def false_positive_rate(store: Store, model_id: str) -> dict[str, Any]:
    """``decided`` flags of the model, how many were a ``false_positive``, and the ``rate`` (None before any
    decision)."""
    decided, false_positive = store.run(
        "false_positive_counts", {"model_id": model_id, "false_positive": FALSE_POSITIVE_ACTION}).fetchone()
    return {"decided": int(decided), "false_positive": int(false_positive),
            "rate": false_positive / decided if decided else None}


def group_order(state: str) -> int:
    """A state's place in the report."""
    return STATES.index(state)
