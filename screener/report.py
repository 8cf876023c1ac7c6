"""The report of one run, in one of the formats of :mod:`screener.renderers`, and how it is written to disk.

The HTML page is for people (its defences against the attacker-controlled text it quotes are described in
:mod:`screener.renderers.html_page`); CSV and JSON carry one record per flagged user for outreach tools.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from screener.errors import ConfigError, StorageError
from screener.renderers import RENDERERS

FORMATS = tuple(RENDERERS)


def render(data: dict, fmt: str = "html", redact: bool = False) -> bytes:
    """The report as the bytes of its file. ``redact`` masks contact details in the evidence messages; CSV and
    JSON carry no message text, so it changes nothing there."""
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise ConfigError(f"Unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}.")
    return renderer(data, redact)


def write_report(data: dict, path: str | Path, fmt: str = "html", redact: bool = False) -> Path:
    """Render and write atomically: a 0600 temp file in the same folder, fsynced, then renamed over ``path``.
    Readers never see a half-written report, and the report (which quotes private messages) is never readable by
    other local users, not even for a moment."""
    content = render(data, fmt, redact)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(
            f"Could not write the report to {path}: {exc.strerror or exc}. Expected a writable folder "
            f"{path.parent.resolve()}; check that it exists, has free space and is writable by this user."
        ) from exc
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable across a power cut.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
