"""The report of one run, in one of the formats of :mod:`screener.renderers`, and how it is written to disk.

The HTML page is for people (its defences against the attacker-controlled text it quotes are described in
:mod:`screener.renderers.html_page`); CSV and JSON carry one record per flagged user for outreach tools.
"""

from __future__ import annotations

from pathlib import Path

from screener.errors import ConfigError, StorageError
from screener.files import write_atomically
from screener.renderers import RENDERERS

FORMATS = tuple(RENDERERS)


def render(data: dict, fmt: str = "html", redact: bool = False) -> bytes:
    """The report as the bytes of its file. ``redact`` masks contact details in the evidence messages; CSV and
    JSON carry no message text, so it changes nothing there."""
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise ConfigError(f"Unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}.")
    return renderer(data, redact)


def write_report(data: dict, path: str | Path, fmt: str = "html", redact: bool = False) -> Path:
    """Render and write atomically (:func:`screener.files.write_atomically`): readers never see a half-written
    report, and the report (which quotes private messages) is never readable by other local users, not even for a
    moment."""
    content = render(data, fmt, redact)
    path = Path(path)
    try:
        return write_atomically(path, content)
    except OSError as exc:
        raise StorageError(
            f"Could not write the report to {path}: {exc.strerror or exc}. Expected a writable folder "
            f"{path.parent.resolve()}; check that it exists, has free space and is writable by this user."
        ) from exc
