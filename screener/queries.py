"""Loads the SQL statements shipped in ``screener.sql`` (the repository's ``sql/`` folder) by name.

The files are grouped in subfolders by what they are about (``runs/``, ``scores/``, ``flags/``, ``source/``,
``schema/``, ``report/``, ``migrations/``, ``rules/``); a statement is found by its name alone, whatever its folder,
so names are unique across folders (checked when the folder is first read).

Values are always bound as ``$name`` parameters. Identifiers (the user's table and column names) cannot be bound,
so a statement may hold ``{placeholder}`` slots that only :func:`with_identifiers` fills, and only with names that
appear in an allow-list read from the database itself, double-quoted.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

_NAME_LINE = re.compile(r"^-- name: (?P<name>[a-z0-9_]+)\s*$")
_SLOT = re.compile(r"\{([a-z_]+)\}")
_SUFFIX = ".sql"


class UnknownIdentifier(ValueError):
    pass


@dataclass(frozen=True)
class Statement:
    """One statement file: its name (the file name without ``.sql``), its folder below ``sql/`` and the file."""

    name: str
    folder: str
    resource: Traversable

    @property
    def path(self) -> str:
        return "/".join(part for part in ("sql", self.folder, self.name + _SUFFIX) if part)


@lru_cache(maxsize=1)
def sql_root() -> Traversable:
    """The ``sql/`` folder: beside the package in a source checkout or a copied tree, else the installed
    ``screener.sql`` package of a wheel (an editable install maps that name to the checkout's folder)."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "sql").is_dir():
        return checkout / "sql"
    return resources.files("screener.sql")


def statements(root: Traversable) -> dict[str, Statement]:
    """Every ``.sql`` file under ``root``, at any depth, by name; two files with one name are an error."""
    found: dict[str, Statement] = {}
    pending: list[tuple[str, Traversable]] = [("", root)]
    while pending:
        folder, directory = pending.pop()
        for entry in directory.iterdir():
            if entry.is_dir():
                pending.append((f"{folder}/{entry.name}".lstrip("/"), entry))
            elif entry.name.endswith(_SUFFIX):
                name = entry.name[: -len(_SUFFIX)]
                statement = Statement(name, folder, entry)
                if name in found:
                    raise ValueError(
                        f"two SQL statements are named {name!r}: {found[name].path} and {statement.path}")
                found[name] = statement
    return found


@lru_cache(maxsize=1)
def _shipped() -> dict[str, Statement]:
    return statements(sql_root())


@lru_cache(maxsize=None)
def load(name: str) -> str:
    """The text of the statement file ``<name>.sql`` in any folder of ``sql/``; its first line must be
    ``-- name: <name>``."""
    statement = _shipped().get(name)
    if statement is None:
        raise KeyError(f"no SQL statement named {name!r} in screener.sql")
    text = statement.resource.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text else ""
    match = _NAME_LINE.match(first)
    if not match or match.group("name") != name:
        raise ValueError(f"{statement.path} must start with '-- name: {name}', found {first!r}")
    return text


def description(name: str) -> str:
    """The one-line description on the second line of a statement file, without its ``-- ``."""
    lines = load(name).splitlines()
    return lines[1].removeprefix("--").strip() if len(lines) > 1 else ""


def names(folder: str | None = None) -> list[str]:
    """Names of the shipped statements, sorted; with ``folder``, only those in that folder of ``sql/``."""
    return sorted(s.name for s in _shipped().values() if folder is None or s.folder == folder)


def quote_identifier(name: str | tuple[str, ...]) -> str:
    """A double-quoted identifier; a tuple of names is a qualified one (``catalog.schema.table``)."""
    parts = (name,) if isinstance(name, str) else name
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def with_identifiers(name: str, allowed: Mapping[str, Collection[str | tuple[str, ...]]],
                     **identifiers: str | tuple[str, ...]) -> str:
    """Fill the ``{slot}`` identifiers of a statement (identifiers for slots it lacks are ignored).

    Every slot must be filled, and each identifier must be in ``allowed[slot]`` (names read from the database).
    """
    text = load(name)
    slots = set(_SLOT.findall(text))
    if not slots <= set(identifiers):
        raise ValueError(f"{name} has identifier slots {sorted(slots)}, got {sorted(identifiers)}")
    for slot in slots:
        ident = identifiers[slot]
        if ident not in allowed.get(slot, ()):
            raise UnknownIdentifier(f"{ident!r} (for {slot}) is not one of {sorted(map(str, allowed.get(slot, ())))}")
    return _SLOT.sub(lambda m: quote_identifier(identifiers[m.group(1)]), text)
