"""Loads the SQL statements shipped in ``screener.sql`` (the repository's ``sql/`` folder) by name.

Values are always bound as ``$name`` parameters. Identifiers (the user's table and column names) cannot be bound,
so a statement may hold ``{placeholder}`` slots that only :func:`with_identifiers` fills, and only with names that
appear in an allow-list read from the database itself, double-quoted.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path

_NAME_LINE = re.compile(r"^-- name: (?P<name>[a-z0-9_]+)\s*$")
_SLOT = re.compile(r"\{([a-z_]+)\}")


class UnknownIdentifier(ValueError):
    pass


@lru_cache(maxsize=1)
def sql_root():
    """The ``sql/`` folder: beside the package in a source checkout or a copied tree, else the installed
    ``screener.sql`` package of a wheel (an editable install maps that name to the checkout's folder)."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "sql").is_dir():
        return checkout / "sql"
    return resources.files("screener.sql")


@lru_cache(maxsize=None)
def load(name: str) -> str:
    """The text of ``sql/<name>.sql``; its first line must be ``-- name: <name>``."""
    resource = sql_root() / f"{name}.sql"
    if not resource.is_file():
        raise KeyError(f"no SQL statement named {name!r} in screener.sql")
    text = resource.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text else ""
    match = _NAME_LINE.match(first)
    if not match or match.group("name") != name:
        raise ValueError(f"sql/{name}.sql must start with '-- name: {name}', found {first!r}")
    return text


def names() -> list[str]:
    return sorted(
        entry.name[: -len(".sql")]
        for entry in sql_root().iterdir()
        if entry.name.endswith(".sql")
    )


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def with_identifiers(name: str, allowed: Mapping[str, Collection[str]], **identifiers: str) -> str:
    """Fill the ``{slot}`` identifiers of a statement (identifiers for slots it lacks are ignored).

    Every slot must be filled, and each identifier must be in ``allowed[slot]`` (names read from the database).
    """
    text = load(name)
    slots = set(_SLOT.findall(text))
    if not slots <= set(identifiers):
        raise ValueError(f"sql/{name}.sql has identifier slots {sorted(slots)}, got {sorted(identifiers)}")
    for slot in slots:
        ident = identifiers[slot]
        if ident not in allowed.get(slot, ()):
            raise UnknownIdentifier(f"{ident!r} (for {slot}) is not one of {sorted(allowed.get(slot, ()))}")
    return _SLOT.sub(lambda m: quote_identifier(identifiers[m.group(1)]), text)
