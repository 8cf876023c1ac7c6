"""The report of one run, in one of the formats of :mod:`screener.renderers`, and how it is written to disk.

The HTML page is for people (its defences against the attacker-controlled text it quotes are described in
:mod:`screener.renderers.html_page`); CSV and JSON carry one record per flagged user for outreach tools.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from screener import output
from screener.errors import ConfigError
from screener.renderers import RENDERERS

FORMATS = tuple(RENDERERS)


def render(data: dict, fmt: str = "html", redact: bool = False) -> bytes:
    """The report as the bytes of its file. ``redact`` masks contact details in the evidence messages; CSV and
    JSON carry no message text, so it changes nothing there."""
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise ConfigError(f"Unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}.")
    return renderer(data, redact)


def write_report(data: dict, path: str | Path, fmt: str = "html", redact: bool = False,
                 protected: Iterable[str | Path] = ()) -> Path:
    """Render and write through :func:`screener.output.write_file`: atomically, mode 0600 (the report quotes
    private messages, so other local users never read it, not even for a moment), and never over ``protected``
    (the archive and the results database), another data file or anything that is not a regular file."""
    output.check_target(path, protected)
    return output.write_file(path, render(data, fmt, redact), protected=protected, mode=output.PRIVATE,
                             what="the report")
