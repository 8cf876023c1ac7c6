"""The report support staff read in the morning: one self-contained HTML page, or CSV / JSON for outreach tools.

Every string in ``data`` (message text, user ids, model name, reasons) is attacker-controlled. The page is built
so that none of it can act:

- jinja2 with ``autoescape=True`` and ``StrictUndefined``; templates come from the package, never from data, so
  ``{{ }}`` inside a message is just text.
- A Content-Security-Policy meta tag allows exactly one script and one stylesheet, pinned by their SHA-256 hashes
  (computed here at render time), images only from ``data:``, and nothing else: no network, no forms, no
  ``<base>``. An escaping bug would still not run script or load anything.
- No attacker string goes into a script block or a URL; section anchors are a hash of the user id.
- Message text and user ids are wrapped in ``<bdi>`` so right-to-left overrides cannot reorder the page around
  them, and control characters are shown as U+FFFD.

CSV cells that are text and start with ``=``, ``+``, ``-``, ``@``, tab or carriage return get a leading apostrophe,
so a spreadsheet shows them instead of evaluating them as formulas (OWASP's CSV injection advice).
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import io
import json
import math
import os
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from screener.errors import ConfigError, StorageError

FORMATS = ("html", "csv", "json")

# A message can be up to the scanner's truncation limit; the page shows the head and tail of the longest ones so a
# handful of huge messages cannot make the report unusably long.
EVIDENCE_MAX_CHARS = 1200

_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# Redaction patterns, applied in this order (earlier ones swallow text the later ones would misread):
# 1. URLs: a scheme followed by "://" (http, https, ftp, ...), or a word starting with "www.", up to the next
#    whitespace, quote or angle bracket, without trailing sentence punctuation. Also "javascript:" / "data:" URIs.
# 2. E-mail addresses: local@domain.tld.
# 3. @handles: "@" plus letters, digits, "_" and inner dots, not preceded by a word character.
# 4. Phone numbers: 7 to 15 digits, optionally starting with "+" (or "00"), grouped by single spaces, dots,
#    hyphens or parentheses. ISO dates (2026-11-29) and decimals with a single point (3.14159265) are left alone;
#    other long digit runs (order or account numbers) are masked too, which errs on the side of privacy.
# Message text is attacker-controlled, so every pattern is linear: matches may only start where a run of their
# characters starts (lookbehinds), and digit runs and groups are possessive/atomic so a failed match cannot retry
# every way of splitting a long number.
_URL = re.compile(
    r"""(?: (?<![a-z0-9+.-])[a-z][a-z0-9+.-]*+://   # scheme://
          | (?<![\w@.])www\.                        # www.example.org
          | (?<![\w.-])(?:javascript|data|vbscript):  # script and inline-data URIs
        )
        [^\s<>"'`]*[^\s<>"'`.,;:!?)\]}]""",
    re.IGNORECASE | re.VERBOSE,
)
_DOMAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_EMAIL = re.compile(rf"(?<![\w.%+-])[\w.%+-]++@{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})+")
_HANDLE = re.compile(r"(?<![\w@])@\w(?:[\w.]*\w)?")
_PHONE_CANDIDATE = re.compile(r"(?<![\w.+(-])(?>\+?\(?\d++\)?(?:[ .-]?\(?\d++\)?)*+)(?!\w)")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DECIMAL = re.compile(r"\d+\.\d+")


def _mask_phone(match: re.Match[str]) -> str:
    candidate = match.group(0)
    digits = sum(ch.isdigit() for ch in candidate)
    if not 7 <= digits <= 15 or _ISO_DATE.fullmatch(candidate) or _DECIMAL.fullmatch(candidate):
        return candidate
    return "[phone]"


def redact(text: str) -> str:
    """Mask URLs, e-mail addresses, @handles and phone numbers as ``[url]``, ``[email]``, ``@[handle]``,
    ``[phone]`` (patterns documented above)."""
    text = _URL.sub("[url]", text)
    text = _EMAIL.sub("[email]", text)
    text = _HANDLE.sub("@[handle]", text)
    return _PHONE_CANDIDATE.sub(_mask_phone, text)


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
    env.filters["pct"] = _pct
    env.filters["when"] = _when
    return env


def _asset(name: str) -> str:
    env = _environment()
    source, _, _ = env.loader.get_source(env, name)
    return source


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy(script: str, style: str) -> str:
    """The page's policy: only the given inline script and stylesheet, ``data:`` images, nothing else."""
    return (
        f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; img-src data:; "
        "base-uri 'none'; form-action 'none'"
    )


def _pct(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.0f}%"


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


def _evidence_text(text: str | None, redacted: bool) -> str:
    """What the page shows of a message: redacted first (so a cut cannot leave half an address), control
    characters made visible, the longest shortened to head and tail."""
    if text is None:
        return ""
    text = redact(text) if redacted else text
    text = _CONTROL_CHARS.sub("\ufffd", text)
    if len(text) > EVIDENCE_MAX_CHARS:
        half = EVIDENCE_MAX_CHARS // 2
        text = f"{text[:half]} … [{len(text) - 2 * half} characters omitted] … {text[-half:]}"
    return text


def anchor_id(user_id: Any) -> str:
    """A page anchor for a user that never contains the (attacker-controlled) id itself."""
    return "u-" + hashlib.sha256(str(user_id).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _confidence_level(z: float) -> str:
    level = math.erf(z / math.sqrt(2)) * 100
    return f"{level:.1f}".rstrip("0").rstrip(".") + "%"


def _window(user: dict, days: int) -> dict | None:
    for window in user["windows"]:
        if window["days"] == days:
            return window
    return None


def _top_evidence(user: dict) -> dict | None:
    evidence = user["evidence"]
    if not evidence:
        return None
    return max(evidence, key=lambda item: item["p_negative"])


# Chart geometry, in SVG user units; the SVG scales to the page width.
_CHART_W, _PLOT_X, _PLOT_RIGHT = 640, 40, 8
_PLOT_TOP, _PLOT_H, _VOLUME_GAP, _VOLUME_H, _AXIS_H = 16, 110, 6, 22, 16
_TICK_CLEARANCE = 14


def _chart(user: dict, settings: dict) -> dict:
    """Bar positions for the daily negative ratio. Days with no messages get no bar (a gap); days with messages
    but no negative ones get a thin stub, so the two look different. A volume strip under the plot shows n."""
    daily = user["daily"]
    plot_w = _CHART_W - _PLOT_X - _PLOT_RIGHT
    slot = plot_w / max(len(daily), 1)
    bar_w = max(slot * 0.72, 1.0)
    max_n = max((day["n"] for day in daily), default=0) or 1
    volume_top = _PLOT_TOP + _PLOT_H + _VOLUME_GAP
    bars = []
    for i, day in enumerate(daily):
        x = _PLOT_X + i * slot + (slot - bar_w) / 2
        ratio = day["ratio"] if day["n"] else None
        volume_h = _VOLUME_H * day["n"] / max_n
        if ratio is None:
            height, kind = 0.0, "none"
        elif ratio <= 0:
            height, kind = 1.5, "zero"
        else:
            height = max(_PLOT_H * min(ratio, 1.0), 1.5)
            kind = "hi" if ratio >= settings["min_ratio"] else "lo"
        label = (
            f"{day['day']}: no messages"
            if ratio is None
            else f"{day['day']}: {day['neg']} of {day['n']} negative ({_pct(ratio)})"
        )
        bars.append(
            {
                "x": round(x, 2),
                "y": round(_PLOT_TOP + _PLOT_H - height, 2),
                "w": round(bar_w, 2),
                "h": round(height, 2),
                "kind": kind,
                "label": label,
                "vy": round(volume_top + _VOLUME_H - volume_h, 2),
                "vh": round(volume_h, 2),
            }
        )
    window_days = min(settings["flag_window_days"], len(daily))
    axis_y = volume_top + _VOLUME_H + _AXIS_H - 4
    threshold_y = round(_PLOT_TOP + _PLOT_H * (1 - min(max(settings["min_ratio"], 0.0), 1.0)), 2)
    # The threshold gets its own red tick label; grey ticks too close to it would overprint it.
    ticks = [
        {"y": _PLOT_TOP + _PLOT_H * (1 - share), "label": _pct(share)}
        for share in (1.0, 0.5, 0.0)
        if abs(_PLOT_TOP + _PLOT_H * (1 - share) - threshold_y) >= _TICK_CLEARANCE
    ]
    return {
        "width": _CHART_W,
        "height": volume_top + _VOLUME_H + _AXIS_H,
        "plot_x": _PLOT_X,
        "plot_right": _CHART_W - _PLOT_RIGHT,
        "plot_top": _PLOT_TOP,
        "plot_bottom": _PLOT_TOP + _PLOT_H,
        "mid_y": _PLOT_TOP + _PLOT_H / 2,
        "threshold_y": threshold_y,
        "ticks": ticks,
        "window_x": round(_PLOT_X + (len(daily) - window_days) * slot, 2),
        "window_w": round(window_days * slot, 2),
        "volume_top": volume_top,
        "volume_bottom": volume_top + _VOLUME_H,
        "max_n": max_n,
        "axis_y": axis_y,
        "first_day": daily[0]["day"] if daily else "",
        "last_day": daily[-1]["day"] if daily else "",
        "bars": bars,
    }


def _html_context(data: dict, redacted: bool) -> dict:
    settings = data["settings"]
    flag_days = settings["flag_window_days"]
    long_days = max(settings["windows_days"])
    users = []
    for user in data["flagged"]:
        long_window = _window(user, long_days)
        evidence = [{**item, "text": _evidence_text(item["text"], redacted)} for item in user["evidence"]]
        users.append(
            {
                "u": user,
                "anchor": anchor_id(user["user_id"]),
                "ratio_long": long_window["ratio"] if long_window else None,
                "evidence": evidence,
                "chart": _chart(user, settings),
            }
        )
    return {
        "data": data,
        "run": data["run"],
        "settings": settings,
        "users": users,
        "flag_days": flag_days,
        "long_days": long_days,
        "confidence": _confidence_level(settings["confidence_z"]),
        "redacted": redacted,
    }


def _render_html(data: dict, redacted: bool) -> str:
    script = _asset("report.js")
    style = _asset("report.css")
    template = _environment().get_template("report.html.j2")
    return template.render(
        **_html_context(data, redacted),
        csp=content_security_policy(script, style),
        script=Markup(script),
        style=Markup(style),
    )


def row_keys(long_days: int) -> list[str]:
    """Column names of the CSV and keys of the JSON ``flagged`` objects, in order. The long-window ratio's name
    follows the settings (``ratio_30d`` with the default windows)."""
    return [
        "rank", "user_id", "n_messages", "n_negative", "ratio", "wilson_lower", f"ratio_{long_days}d",
        "ratio_last_n", "baseline_ratio", "escalating", "first_flagged", "top_evidence_message_id",
        "top_evidence_p_negative",
    ]


def flagged_rows(data: dict) -> list[dict]:
    """One flat record per flagged user (``ratio``, ``n_messages`` and ``n_negative`` are the flag window's)."""
    long_days = max(data["settings"]["windows_days"])
    rows = []
    for user in data["flagged"]:
        long_window = _window(user, long_days)
        top = _top_evidence(user)
        values = [
            user["rank"], user["user_id"], user["n_messages"], user["n_negative"], user["ratio"],
            user["wilson_lower"], long_window["ratio"] if long_window else None, user["last_n"]["ratio"],
            user["baseline_ratio"], user["escalating"], user["first_flagged"],
            top["message_id"] if top else None, top["p_negative"] if top else None,
        ]
        rows.append(dict(zip(row_keys(long_days), values)))
    return rows


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_CSV_FORMULA_PREFIXES):
        return "'" + value
    return value


def _render_csv(data: dict) -> str:
    header = row_keys(max(data["settings"]["windows_days"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in flagged_rows(data):
        writer.writerow([_csv_cell(row[key]) for key in header])
    return buffer.getvalue()


_JSON_HTML_CHARS = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _render_json(data: dict) -> str:
    # "<", ">" and "&" are written as \u escapes (same JSON value) so the file stays inert if a server or viewer
    # ever sniffs it as HTML or pastes it into a page.
    document = {"run": data["run"], "settings": data["settings"], "flagged": flagged_rows(data)}
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False).translate(_JSON_HTML_CHARS) + "\n"


def render(data: dict, fmt: str = "html", redact: bool = False) -> str:
    """The report as text. ``redact`` masks contact details in the evidence messages; CSV and JSON carry no message
    text, so it changes nothing there."""
    if fmt == "html":
        return _render_html(data, redact)
    if fmt == "csv":
        return _render_csv(data)
    if fmt == "json":
        return _render_json(data)
    raise ConfigError(f"Unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}.")


def write_report(data: dict, path: str | Path, fmt: str = "html", redact: bool = False) -> Path:
    """Render and write atomically: a 0600 temp file in the same folder, fsynced, then renamed over ``path``.
    Readers never see a half-written report, and the report (which quotes private messages) is never readable by
    other local users, not even for a moment."""
    text = render(data, fmt, redact)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(
            f"Could not write the report to {path}: {exc.strerror or exc}. Expected a writable folder "
            f"{path.parent.resolve()}; check that it exists, has free space and is writable by this user."
        ) from exc
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable across a power cut.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
