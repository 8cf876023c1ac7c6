"""The CSV format: a header and one row per flagged user (:mod:`screener.renderers.rows`), for outreach tools.

Text cells that start with ``=``, ``+``, ``-``, ``@``, tab or carriage return get a leading apostrophe, so a
spreadsheet shows them instead of evaluating them as formulas (OWASP's CSV injection advice).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from screener.renderers.rows import flagged_rows, row_keys

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """A value as a CSV cell: empty for None, true/false, and text a spreadsheet would evaluate made inert."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def render(data: dict, redact: bool) -> bytes:
    """The CSV as UTF-8; it carries no message text, so ``redact`` changes nothing."""
    header = row_keys(max(data["settings"]["windows_days"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in flagged_rows(data):
        writer.writerow([cell(row[key]) for key in header])
    return buffer.getvalue().encode("utf-8")
