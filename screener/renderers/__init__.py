"""The report's output formats: each renderer turns the report data of one run (what
:func:`screener.aggregate.report_data` returns) into the bytes of one file.

A renderer is ``render(data: dict, redact: bool) -> bytes``; ``redact`` asks it to mask contact details in message
text, which only formats that carry message text have to honour. To add a format, write its module in this package
and add it to :data:`RENDERERS`: ``screener report --format`` offers every key.
"""

from __future__ import annotations

from collections.abc import Callable

from screener.renderers import csv_table, html_page, json_document

Renderer = Callable[[dict, bool], bytes]

RENDERERS: dict[str, Renderer] = {
    "html": html_page.render,
    "csv": csv_table.render,
    "json": json_document.render,
}
