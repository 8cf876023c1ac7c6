"""Report input in the shape screener.aggregate.report_data builds, shared by the report tests."""

from __future__ import annotations

import random
from datetime import date, timedelta

AS_OF = "2026-11-29T06:00:00+00:00"

SETTINGS = {
    "windows_days": [7, 30], "last_n": 20, "flag_window_days": 7, "min_ratio": 0.6, "min_messages": 5,
    "confidence_z": 1.96, "baseline_days": 30, "escalation_delta": 0.3, "negative_threshold": 0.5,
    "rules": [{"name": "high_negative_share",
               "description": "At least 5 messages in the last 7 days, with a negative share of at least 0.6."}],
    "handled_margin": 0.15, "handled_days": 14,
}

STATE_ORDER = ("new", "escalated", "returning", "handled", "snoozed")

NEGATIVE_TEXTS = [
    "Honestly I don't see the point of any of this anymore.",
    "Third time this week the app lost my data. I'm done.",
    "Nobody answers, nobody cares. Why do I even bother writing here",
    "this is the worst experience i have had with any service, ever",
    "I'm so tired. Everything keeps going wrong and I can't fix it.",
    "Stop sending me these reminders, I can't pay, I lost my job.",
    "You people promised a refund two months ago. Still nothing.",
]


def _daily(rng: random.Random, days: int, late_negative: float, early_negative: float) -> list[dict]:
    end = date(2026, 11, 29)
    series = []
    for i in range(days):
        day = end - timedelta(days=days - 1 - i)
        recent = i >= days - 7
        n = 0 if rng.random() < (0.1 if recent else 0.3) else rng.randint(1, 6 if recent else 4)
        share = late_negative if recent else early_negative
        neg = sum(rng.random() < share for _ in range(n))
        series.append({"day": day.isoformat(), "n": n, "neg": neg, "ratio": round(neg / n, 3) if n else None})
    return series


def _user(rng, rank, user_id, n, neg, wilson, ratio_30, last_n, baseline, escalating, earlier, late, early):
    return {
        "state": "returning" if earlier else "new", "decisions": [],
        "rank": rank, "user_id": user_id, "n_messages": n, "n_negative": neg, "ratio": round(neg / n, 3),
        "wilson_lower": wilson,
        "windows": [{"days": 7, "n": n, "neg": neg, "ratio": round(neg / n, 3)},
                    {"days": 30, "n": n * 3, "neg": round(n * 3 * ratio_30), "ratio": ratio_30}],
        "last_n": {"n": 20, "neg": round(20 * last_n), "ratio": last_n},
        "baseline_ratio": baseline, "escalating": escalating,
        "rule": "high_negative_share",
        "reason": f"{neg} of {n} messages in the last 7 days negative ({neg / n:.0%}), threshold 60% with at least 5 "
                  "messages",
        "first_flagged": earlier[0] if earlier else "2026-11-29", "earlier_flags": earlier,
        "daily": _daily(rng, 31, late, early),
        "evidence": [
            {"message_id": f"m-{rank}{k:03d}", "sent_at": f"2026-11-{28 - k:02d}T{9 + k:02d}:1{k}:00+00:00",
             "p_negative": round(0.99 - 0.04 * k, 2), "label": "negative", "text": text}
            for k, text in enumerate(rng.sample(NEGATIVE_TEXTS, 4))
        ],
    }


def sample_data() -> dict:
    """Four flagged users with rank order different from user-id, 30-day-ratio and first-flagged order: maria.k and
    zed_9 new, u-1042 and anon-77 returning."""
    rng = random.Random(7)
    flagged = [
        _user(rng, 1, "u-1042", 24, 21, 0.69, 0.42, 0.85, 0.12, True, ["2026-11-25", "2026-11-27"], 0.85, 0.15),
        _user(rng, 2, "maria.k", 12, 10, 0.55, 0.47, 0.65, 0.2, True, [], 0.8, 0.2),
        _user(rng, 3, "anon-77", 9, 7, 0.45, 0.71, 0.7, 0.66, False, ["2026-11-20"], 0.75, 0.65),
        _user(rng, 4, "zed_9", 5, 4, 0.38, 0.3, 0.55, None, False, [], 0.8, 0.0),
    ]
    # An old decision that no longer holds: u-1042 is back in the queue.
    flagged[0]["decisions"] = [
        {"id": 1, "action": "contacted", "note": "Called, said it was a bad week.", "reviewer": "sam",
         "decided_at": "2026-11-01T10:30:00+00:00", "run_id": 1, "snooze_until": None},
    ]
    data = {
        "generated_at": "2026-11-29T06:00:41+00:00",
        "run": {
            "id": 3, "started_at": "2026-11-29T06:00:02+00:00", "finished_at": "2026-11-29T06:00:39+00:00",
            "status": "completed", "as_of": AS_OF, "model_name": "default", "model_id": "ab12cd34ef56ab78",
            "messages_scored": 1234, "messages_total": 5000, "messages_skipped": 3,
            "skipped_by_reason": {"empty_text": 2, "null_user_id": 1}, "users_seen": 40, "users_flagged": 4,
            "seconds": 12.5, "false_positive": {"decided": 4, "false_positive": 1, "rate": 0.25},
        },
        "settings": dict(SETTINGS),
        "page": None,
        "flagged": flagged,
    }
    return regroup(data)


def regroup(data: dict) -> dict:
    """Set ``groups`` from the users' states, as screener.aggregate.report_data does."""
    counts = {state: sum(user["state"] == state for user in data["flagged"]) for state in STATE_ORDER}
    data["groups"] = [{"state": state, "count": counts[state], "collapsed": state in ("handled", "snoozed")}
                      for state in STATE_ORDER if counts[state]]
    return data


def empty_data() -> dict:
    data = sample_data()
    data["flagged"] = []
    data["run"]["users_flagged"] = 0
    return regroup(data)


HOSTILE = [
    "<script>window.__pwned='script';document.title='pwned'</script>",
    "<img src=x onerror=\"window.__pwned='img'\">",
    "<a href=\"javascript:window.__pwned='link'\">click me</a>",
    "<svg onload=\"window.__pwned='svg'\"><circle r=\"5\"/></svg>",
    "<style>body{background:url(http://127.0.0.1:9/css-leak)}</style>",
    "<div style=\"background-image:url('https://example.invalid/x.png')\">styled</div>",
    "\"><script>window.__pwned='attr'</script><p x=\"",
    "</textarea></title></style></script><script>window.__pwned='close'</script>",
    "<iframe src=\"javascript:parent.__pwned='iframe'\"></iframe>",
    "<meta http-equiv=\"refresh\" content=\"0;url=http://127.0.0.1:9/refresh\">",
    "<base href=\"http://127.0.0.1:9/\"><link rel=\"stylesheet\" href=\"//127.0.0.1:9/s.css\">",
    "{{ 7*7 }} {{ config }} {% for x in range(3) %}loop{% endfor %}",
    "javascript:alert(document.domain)",
]


def hostile_data() -> dict:
    """Every attacker-controlled field filled with payloads that would set window.__pwned or load a URL."""
    data = sample_data()
    data["run"]["model_name"] = "<script>window.__pwned='model'</script>{{ 7*7 }}"
    data["run"]["skipped_by_reason"] = {"<img src=x onerror=\"window.__pwned='reason'\">": 3}
    data["settings"]["rules"] = [{"name": HOSTILE[2], "description": HOSTILE[4]}]
    for user, payload in zip(data["flagged"], [HOSTILE[0], HOSTILE[1], HOSTILE[3], HOSTILE[11]]):
        user["user_id"] = payload
        user["rule"], user["reason"] = HOSTILE[6], HOSTILE[7]
        user["evidence"] = [
            {"message_id": payload, "sent_at": "2026-11-28T10:00:00+00:00", "p_negative": 0.9, "label": "negative",
             "text": payload}
            for payload in HOSTILE
        ]
        user["decisions"] = [
            {"id": k, "action": "contacted", "note": text, "reviewer": text, "decided_at": "2026-11-28T12:00:00+00:00",
             "run_id": 2, "snooze_until": None}
            for k, text in enumerate(HOSTILE)
        ]
    return data
