"""The JSON format: the run, the settings and one object per flagged user (:mod:`screener.renderers.rows`)."""

from __future__ import annotations

import json

from screener.renderers.rows import flagged_rows

# "<", ">" and "&" are written as \u escapes (the same JSON value) so the file stays inert if a server or viewer
# ever sniffs it as HTML or pastes it into a page.
_HTML_CHARS = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def render(data: dict, redact: bool) -> bytes:
    """The JSON document as UTF-8; it carries no message text, so ``redact`` changes nothing."""
    document = {"run": data["run"], "settings": data["settings"], "flagged": flagged_rows(data)}
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False).translate(_HTML_CHARS) + "\n"
    return text.encode("utf-8")
