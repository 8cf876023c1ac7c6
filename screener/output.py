"""Where a command may write its output file, and the one way it writes it.

Every file a command writes (a report, a comparison) goes through :func:`write_file`, which refuses a target that
is the data the command reads or writes (the archive, the results database, its write-ahead log), any other DuckDB
or Parquet file, and anything that is not a regular file (a folder, a FIFO, a device node, a socket). The same file
is recognised through symlinks and hard links: paths are compared resolved, and existing files by device and
inode. A symlink to a regular file is written through, so the link stays. The content lands atomically: a temp
file in the target's own folder, fsynced, renamed over the target, then the folder fsynced, so a reader never sees
half a file and a crash leaves the old file or the new one.
"""

from __future__ import annotations

import glob
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from screener.errors import ConfigError, StorageError
from screener.text import visible

STDOUT = "-"
# Reports quote people's messages: only their owner reads them. Other outputs get the usual mode, less the umask.
PRIVATE = 0o600
SHARED = 0o666

_DUCKDB_MAGIC = (8, b"DUCK")
_PARQUET_MAGIC = (0, b"PAR1")
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def non_regular_kind(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is, in words, when it is not a regular file (None for one)."""
    return next((kind for is_kind, kind in _KINDS if is_kind(mode)), None)


def data_files(*locations: str | Path | None) -> list[Path]:
    """The local files behind the archive and results locations of a command: each path, a DuckDB file's
    write-ahead log beside it, and every file a glob matches. Object-storage URIs name no local file."""
    found: list[Path] = []
    for location in locations:
        if location is None or "://" in str(location):
            continue
        text = str(location)
        found.append(Path(text))
        found.append(Path(text + ".wal"))
        if any(ch in text for ch in "*?["):
            found.extend(Path(match) for match in glob.glob(text, recursive=True))
    return found


def check_target(path: str | Path, protected: Iterable[str | Path] = ()) -> Path:
    """The file to write for output ``path``, checked: the path itself, or the regular file its symlinks lead
    to. Raises :class:`ConfigError` when writing there would replace the command's own data or something that is
    not a regular file."""
    path = Path(path)
    target = Path(os.path.realpath(path))
    shown = visible(str(path))
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise StorageError(f"cannot write {shown}: {exc.strerror or exc}; expected a writable file path") from exc
    for candidate in protected:
        if _same_file(target, info, Path(candidate)):
            raise ConfigError(
                f"refusing to write {shown}: it is {visible(str(candidate))}, the data this command reads or "
                "writes. Give another output path (-o report.html, or -o - for stdout)."
            )
    if info is None:
        return target
    kind = non_regular_kind(info.st_mode)
    if kind is not None:
        raise ConfigError(
            f"refusing to write {shown}: it is {kind}, not a regular file, and would be replaced. Give the path of "
            "a regular file, or -o - for stdout."
        )
    if _looks_like_data(target):
        raise ConfigError(
            f"refusing to write {shown}: it is a DuckDB or Parquet data file, not an earlier report. Give "
            "another output path."
        )
    return target


def write_file(path: str | Path, content: bytes, protected: Iterable[str | Path] = (), mode: int = PRIVATE,
               what: str | None = None) -> Path:
    """Write ``content`` to ``path`` atomically after :func:`check_target`; returns ``path``. The file is
    created with ``mode`` (less the umask), never wider, not even for a moment. ``what`` (such as "the report")
    names the content in the error a failed write raises."""
    target = check_target(path, protected)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(
            f"could not write {what + ' to ' if what else ''}{visible(str(path))}: {exc.strerror or exc}. Expected a "
            f"writable folder {visible(str(target.parent))}; check that it exists, has free space and is writable by "
            "this user."
        ) from exc
    return Path(path)


def _same_file(target: Path, info: os.stat_result | None, candidate: Path) -> bool:
    if Path(os.path.realpath(candidate)) == target:
        return True
    if info is None:
        return False
    try:
        other = os.stat(candidate)
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino)


def _looks_like_data(target: Path) -> bool:
    try:
        with open(target, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return False
    return any(head[offset:offset + len(magic)] == magic for offset, magic in (_DUCKDB_MAGIC, _PARQUET_MAGIC))


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable across a power cut.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
