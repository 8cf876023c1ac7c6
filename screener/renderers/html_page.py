"""The HTML format: one self-contained page support staff read in the morning.

Every string in ``data`` (message text, user ids, model name, skip reasons) is attacker-controlled. The page is
built so that none of it can act:

- jinja2 with ``autoescape=True`` and ``StrictUndefined``; templates come from the package, never from data, so
  ``{{ }}`` inside a message is just text.
- A Content-Security-Policy meta tag allows exactly one script and one stylesheet, pinned by their SHA-256 hashes
  (computed here at render time), images only from ``data:``, and nothing else: no network, no forms (the served
  review page: forms to its own origin only), no ``<base>``. An escaping bug would still not run script or load
  anything.
- No attacker string goes into a script block or a URL; section anchors are a hash of the user id, and the review
  forms name the user by the hex of its UTF-8 bytes, which a browser sends back unchanged.
- Message text and user ids are wrapped in ``<bdi>`` so right-to-left overrides cannot reorder the page around
  them, and control characters are shown as U+FFFD.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import re
from datetime import datetime
from typing import Any

from markupsafe import Markup

from screener.renderers.chart import chart, pct
from screener.renderers.redaction import redact as redact_text
from screener.renderers.rows import long_window
from screener.states import ACTIONS, NOTE_MAX_CHARS, REVIEWER_MAX_CHARS

# A message can be up to the scanner's truncation limit; the page shows the head and tail of the longest ones so a
# handful of huge messages cannot make the report unusably long.
EVIDENCE_MAX_CHARS = 1200

_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("screener", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = pct
    env.filters["when"] = _when
    return env


def _asset(name: str) -> str:
    env = _environment()
    source, _, _ = env.loader.get_source(env, name)
    return source


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy(script: str, style: str, form_action: str = "'none'") -> str:
    """The page's policy: only the given inline script and stylesheet, ``data:`` images, forms only to
    ``form_action``, nothing else."""
    return (
        f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; img-src data:; "
        f"base-uri 'none'; form-action {form_action}"
    )


def page_policy(form_action: str = "'none'") -> str:
    """The policy of the page as :func:`render_page` writes it."""
    return content_security_policy(_asset("report.js"), _asset("report.css"), form_action)


def _when(value: str | None) -> str:
    """ISO timestamp to 'YYYY-MM-DD HH:MM UTC' (or its own offset); anything unparsable is shown as given."""
    if value is None:
        return "–"
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return str(value)
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    offset = moment.utcoffset()
    zone = "UTC" if not offset else moment.strftime("UTC%z")
    return moment.strftime("%Y-%m-%d %H:%M ") + zone


def evidence_text(text: str | None, redacted: bool) -> str:
    """What the page shows of a message: redacted first (so a cut cannot leave half an address), control
    characters made visible, the longest shortened to head and tail."""
    if text is None:
        return ""
    text = redact_text(text) if redacted else text
    text = _CONTROL_CHARS.sub("\ufffd", text)
    if len(text) > EVIDENCE_MAX_CHARS:
        half = EVIDENCE_MAX_CHARS // 2
        text = f"{text[:half]} … [{len(text) - 2 * half} characters omitted] … {text[-half:]}"
    return text


def anchor_id(user_id: Any) -> str:
    """A page anchor for a user that never contains the (attacker-controlled) id itself."""
    return "u-" + hashlib.sha256(str(user_id).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def user_key(user_id: str) -> str:
    """How a review form names a user: hex digits, which no form encoding changes (a newline in a field would come
    back as CR LF)."""
    return user_id.encode("utf-8", "surrogatepass").hex()


def user_from_key(key: str) -> str:
    """The user id a review form names; ValueError for anything :func:`user_key` does not write."""
    return bytes.fromhex(key).decode("utf-8", "surrogatepass")


# The served page's buttons; a snooze has its own, beside the date it needs.
REVIEW_BUTTONS = (("contacted", "Contacted"), ("no-action", "No action needed"),
                  ("false-positive", "False positive"), ("escalated", "Escalate"))

STATE_TITLES = {"new": "New", "escalated": "Escalated", "returning": "Returning", "handled": "Handled",
                "snoozed": "Snoozed"}


def _state_notes(settings: dict) -> dict[str, str]:
    return {
        "new": "Flagged for the first time, no decision in force.",
        "escalated": "A reviewer escalated them; they stay here until someone decides again.",
        "returning": "Flagged by an earlier run too, with no decision in force.",
        "handled": (f"Contacted, judged fine or a false positive less than {settings['handled_days']} days ago, and "
                    f"their {settings['flag_window_days']}-day share has not risen "
                    f"{settings['handled_margin'] * 100:.0f} points above its share then."),
        "snoozed": "Snoozed by a reviewer until a date after this run.",
    }


def _decisions(decisions: list[dict], redacted: bool) -> list[dict]:
    return [{**d, "note": evidence_text(d["note"], redacted) if d["note"] else None,
             "reviewer": _CONTROL_CHARS.sub("\ufffd", d["reviewer"]),
             "css": d["action"] if d["action"] in ACTIONS else "other"} for d in decisions]


def _confidence_level(z: float) -> str:
    level = math.erf(z / math.sqrt(2)) * 100
    return f"{level:.1f}".rstrip("0").rstrip(".") + "%"


def _context(data: dict, redacted: bool) -> dict:
    settings = data["settings"]
    flag_days = settings["flag_window_days"]
    long_days = max(settings["windows_days"])
    by_state: dict[str, list] = {group["state"]: [] for group in data["groups"]}
    for user in data["flagged"]:
        window = long_window(user, long_days)
        evidence = [{**item, "text": evidence_text(item["text"], redacted)} for item in user["evidence"]]
        by_state[user["state"]].append(
            {
                "u": user,
                "anchor": anchor_id(user["user_id"]),
                "user_key": user_key(user["user_id"]),
                "ratio_long": window["ratio"] if window else None,
                "evidence": evidence,
                "decisions": _decisions(user["decisions"], redacted),
                "chart": chart(user, settings),
            }
        )
    return {
        "data": data,
        "run": data["run"],
        "settings": settings,
        "groups": [{**group, "users": by_state[group["state"]]} for group in data["groups"]],
        "page": data["page"],
        "state_titles": STATE_TITLES,
        "state_notes": _state_notes(settings),
        "flag_days": flag_days,
        "long_days": long_days,
        "confidence": _confidence_level(settings["confidence_z"]),
        "redacted": redacted,
    }


def render(data: dict, redact: bool) -> bytes:
    """The page as UTF-8; ``redact`` masks contact details in the evidence messages and decision notes (user ids
    stay: staff need them to reach out)."""
    return render_page(data, redact)


def render_page(data: dict, redact: bool, review: dict | None = None) -> bytes:
    """The page, or with ``review`` the served review page: a decision form per user, posting to ``/decide`` with
    ``review["csrf"]``, the reviewer name ``review["reviewer"]`` filled in, snoozes from
    ``review["first_snooze_day"]``."""
    script = _asset("report.js")
    style = _asset("report.css")
    template = _environment().get_template("report.html.j2")
    if review is not None:
        review = {**review, "actions": REVIEW_BUTTONS, "note_max": NOTE_MAX_CHARS,
                  "reviewer_max": REVIEWER_MAX_CHARS}
    page = template.render(
        **_context(data, redact),
        review=review,
        csp=content_security_policy(script, style, "'self'" if review is not None else "'none'"),
        script=Markup(script),
        style=Markup(style),
    )
    return page.encode("utf-8")
