"""Text shown to people on a terminal or in a log: the characters that could act instead of being read, escaped.

User ids, paths and other values come from the archive and the command line, so a value can carry an ANSI/OSC
sequence that drives the terminal, a newline or tab that forges a row of a table or a line of a log, a bidi
override that shows its text reversed, or an invisible character that makes two ids look alike. :func:`visible`
turns every such character into a backslash escape in Python's notation (``\\x1b``, ``\\n``, ``\\u202e``): the
control characters (C0, DEL, C1: category Cc), format characters (Cf: zero-width characters, bidi embeddings,
overrides and isolates, the byte order mark), the line and paragraph separators (Zl, Zp), and lone surrogates
(Cs: what Python makes of bytes in a path that are not UTF-8). Machine-readable outputs (JSON, CSV) keep values
exact and do not use this.
"""

from __future__ import annotations

import logging
import unicodedata

_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(value: object) -> str:
    """``str(value)`` with every control, format, separator and surrogate character escaped."""
    text = str(value)
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _HIDDEN else ch for ch in text)


def visible_lines(text: str) -> str:
    """Each line of a multi-line text for a terminal made :func:`visible`, the line breaks between them kept."""
    return "\n".join(visible(line) for line in text.split("\n"))


class VisibleFormatter(logging.Formatter):
    """A log formatter whose message part is :func:`visible`, so a logged value cannot forge or hide a line;
    tracebacks are appended as they are."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = visible(record.message)
        return super().formatMessage(record)
