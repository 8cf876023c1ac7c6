"""Stable keyed pseudonyms for user and message ids, for reports shared outside the support team.

A pseudonym is HMAC-SHA256 of the id under a secret key taken from the environment variable
``SCREENER_PSEUDONYM_KEY``, its first 16 hex digits behind a prefix: ``user-`` for user ids, ``msg-`` for message
ids. Under one key an id always gets the same pseudonym, so the reports of different nights can be compared; without
the key nobody can compute one, nor find the id behind one by trying every likely id. Whoever holds the key can
find a person's pseudonym by computing it. 16 hex digits are 64 bits: two ids of one archive share a pseudonym with
a chance of about n^2 / 2^65 (n = 10 million users: 3 in a million).

:func:`pseudonymize_report` rewrites the report data of :func:`screener.aggregate.report_data` before it is rendered,
so every format gets the same pseudonyms: every value under a ``user_id`` key, every value under a ``message_id``
key (or a key ending in ``_message_id``), and free text (``text`` and ``note`` values). Free text is redacted first
(:func:`screener.renderers.redaction.redact`: @handles, e-mail addresses, phone numbers and URLs are masked, so a
person the data does not list cannot be named either), then every whole-word occurrence of a user id or message id
the data holds is replaced by its pseudonym. A pseudonym passes a second redaction unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import Any

from screener.errors import ConfigError
from screener.renderers.redaction import redact

KEY_VARIABLE = "SCREENER_PSEUDONYM_KEY"
MIN_KEY_BYTES = 16
DIGITS = 16
USER_PREFIX = "user-"
MESSAGE_PREFIX = "msg-"
_FREE_TEXT_KEYS = ("text", "note")


def key_from_env(environ: Mapping[str, str] = os.environ) -> bytes:
    """The pseudonym key: the UTF-8 bytes of ``SCREENER_PSEUDONYM_KEY``, at least 16 of them."""
    value = environ.get(KEY_VARIABLE, "")
    if not value:
        raise ConfigError(
            f"--pseudonymize needs a secret key in the environment variable {KEY_VARIABLE}: set it to a random "
            f"string of at least {MIN_KEY_BYTES} characters (for example `openssl rand -hex 32`) and keep it the "
            "same from one report to the next")
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{KEY_VARIABLE} holds {len(key)} bytes; a key of at least {MIN_KEY_BYTES} is needed, or "
                          "the pseudonyms of likely user ids could be found by trying keys")
    return key


def _digest(prefix: str, value: Any, key: bytes) -> str:
    # The prefix is hashed too, so a user id and a message id with the same text get unrelated pseudonyms.
    data = (prefix + str(value)).encode("utf-8", "surrogatepass")
    return prefix + hmac.new(key, data, hashlib.sha256).hexdigest()[:DIGITS]


def user_pseudonym(user_id: Any, key: bytes) -> str:
    return _digest(USER_PREFIX, user_id, key)


def message_pseudonym(message_id: Any, key: bytes) -> str:
    return _digest(MESSAGE_PREFIX, message_id, key)


def _is_message_key(name: str) -> bool:
    return name == "message_id" or name.endswith("_message_id")


def _ids(value: Any, users: set[str], messages: set[str]) -> None:
    if isinstance(value, dict):
        for name, item in value.items():
            if isinstance(item, str) and name == "user_id":
                users.add(item)
            elif isinstance(item, str) and _is_message_key(name):
                messages.add(item)
            else:
                _ids(item, users, messages)
    elif isinstance(value, list):
        for item in value:
            _ids(item, users, messages)


def pseudonymize_report(data: dict, key: bytes) -> dict:
    """A copy of the report data with user and message ids replaced by their pseudonyms (see the module)."""
    users: set[str] = set()
    messages: set[str] = set()
    _ids(data, users, messages)
    names = {u: user_pseudonym(u, key) for u in users}
    names.update({m: message_pseudonym(m, key) for m in messages if m not in names})
    words = sorted((w for w in names if w), key=len, reverse=True)
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)") if words else None

    def text(value: str) -> str:
        value = redact(value)
        return value if pattern is None else pattern.sub(lambda m: names[m.group(0)], value)

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for name, item in value.items():
                if isinstance(item, str) and name == "user_id":
                    out[name] = user_pseudonym(item, key)
                elif isinstance(item, str) and _is_message_key(name):
                    out[name] = message_pseudonym(item, key)
                elif isinstance(item, str) and name in _FREE_TEXT_KEYS:
                    out[name] = text(item)
                else:
                    out[name] = walk(item)
            return out
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    result = walk(data)
    result["run"] = {**result["run"], "pseudonymized": True}
    return result
