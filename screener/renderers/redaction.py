"""Masks contact details in message text: URLs, e-mail addresses, @handles and phone numbers."""

from __future__ import annotations

import re

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
