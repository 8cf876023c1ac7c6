"""The DuckDB file on disk: what is checked before and after opening it, and what DuckDB's errors mean.

DuckDB's exception types say what went wrong, not its messages, with two gaps that facts fill: a lock held by
another process and a file that is not a database both raise ``IOException`` at connect, so a failed connect asks
the operating system whether another process holds a lock on the file; and a truncated file opens and fails only
when a missing block is read, so an opened file is checked against the block count in DuckDB's own header.

What each type means here, found by experiment (DuckDB 2.0):

========================================  ====================================================  ====
raised                                    when                                                  exit
========================================  ====================================================  ====
``IOException`` at connect, lock held     another process has the file open (a scan running)     4
``OutOfMemoryException``                  ``memory_limit`` too small for the work                2
``ConversionException``,                  a value of the archive that cannot be read (a bad      3
``InvalidInputException``                 timestamp, invalid UTF-8 in Parquet text)
``duckdb.Error`` itself,                  a damaged file ("Corrupt database file ... checksum")  3
``SerializationException``
``IOException`` at connect, other         not a DuckDB file, a newer DuckDB's file, truncated    3
``IOException``, ``TransactionException`` writing failed: disk full, WAL not writable (read-     7
                                          only folder: "Failed to commit")
========================================  ====================================================  ====
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import duckdb

from screener import queries
from screener.output import non_regular_kind
from screener.errors import AlreadyRunningError, ConfigError, InputError, ScreenerError, StorageError
from screener.text import visible

# DuckDB's main file header and its two alternating database headers, before the first block.
HEADER_BYTES = 3 * 4096

RETRY = ("Earlier results are intact; check that the disk has free space and that the folder is writable, then run "
         "the scan again: it resumes after the last committed window.")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return visible(text.splitlines()[0] if text else type(exc).__name__)


def check_path(path: Path, read_only: bool) -> None:
    """Refuse, before DuckDB sees it, a path DuckDB cannot open as a database: one that is not UTF-8 (DuckDB takes
    UTF-8 paths only), that is not a regular file, that is missing when it is to be read, or whose file or folder
    this process cannot write when results are to be written."""
    shown = visible(str(path))
    require_utf8(str(path))
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise InputError(f"cannot open {shown}: {exc.strerror or exc}; expected a DuckDB file") from exc
    kind = None if info is None else non_regular_kind(info.st_mode)
    if kind is not None:
        raise InputError(f"{shown} is {kind}, not a file: expected a DuckDB database file"
                         + (" (Parquet files in a folder are read with 'FOLDER/*.parquet' and --db)"
                            if kind == "a folder" else ""))
    if read_only:
        if info is None:
            raise InputError(f"{shown} does not exist: expected a DuckDB file written by `screener scan`")
        return
    folder = path.parent
    if not folder.is_dir():
        raise StorageError(f"cannot create {shown}: its folder {visible(str(folder))} does not exist. Create it, "
                           "or give a results database in an existing folder.")
    # DuckDB writes its write-ahead log beside the database, so the folder must be writable, not only the file.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(
            f"cannot write results to {shown}: this user may not write in its folder {visible(str(folder))}, where "
            "DuckDB keeps the database's write-ahead log. Make the folder writable, or give a results database "
            "elsewhere with --db."
        )
    if info is not None and not os.access(path, os.W_OK):
        raise StorageError(f"cannot write results to {shown}: the file is read-only for this user. Make it "
                           "writable, or give a results database elsewhere with --db.")


def require_utf8(location: str) -> None:
    """Refuse a path DuckDB cannot take: it opens UTF-8 paths only, and Python keeps other bytes of a path as
    lone surrogates."""
    try:
        location.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{visible(location)}: the path holds bytes that are not UTF-8 (shown as \\udcNN), and DuckDB opens "
            "only UTF-8 paths. Rename the file, or give a symlink with a UTF-8 name that points to it."
        ) from None


def check_intact(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse a database file shorter than the blocks its header counts in use: a truncated copy opens, and fails
    (or reads wrong) only when a missing block is needed. Free blocks do not count: a checkpoint cuts those at the
    end of the file off, so the header's total can exceed a sound file."""
    row = con.execute(queries.load("database_size")).fetchone()
    if row is None:
        return
    block_size, blocks = int(row[0]), int(row[1])
    expected = HEADER_BYTES + block_size * blocks if blocks else 0
    actual = os.path.getsize(path)
    if actual < expected:
        raise InputError(
            f"{visible(str(path))} is truncated: its header counts {blocks} blocks of {block_size} bytes in use "
            f"({expected} bytes), the file holds {actual}. It was left untouched; restore it from a backup or "
            "copy it again."
        )


def open_error(exc: duckdb.Error, path: Path, existed: bool, read_only: bool, memory_limit: str) -> ScreenerError:
    """What a failed ``duckdb.connect`` means."""
    shown = visible(str(path))
    if isinstance(exc, duckdb.OutOfMemoryException):
        return _out_of_memory(exc, path, memory_limit)
    if isinstance(exc, (duckdb.IOException, duckdb.ResourceInUseException)) and existed and lock_held(path, read_only):
        return AlreadyRunningError(
            f"{shown} is open for writing by another process (a scan is probably running): {first_line(exc)}. "
            "Wait for it to finish; screener never writes to a database another process holds."
        )
    if existed:
        return InputError(
            f"{shown} is not a readable DuckDB database ({first_line(exc)}); it was left untouched. Pass the DuckDB "
            "file that holds the messages table, or --db for a new results file."
        )
    return StorageError(f"cannot create {shown}: {first_line(exc)}. Check that its folder exists and is writable.")


def classify(exc: duckdb.Error, path: Path, writing: str, *, memory_limit: str, time_column: str = "sent_at",
             text_column: str = "text") -> ScreenerError | None:
    """The screener error a DuckDB error raised on an open database means, or None for types that say nothing
    the caller does not know better. ``writing`` opens the message of a write failure (``"the scan failed on
    PATH"``)."""
    if isinstance(exc, duckdb.OutOfMemoryException):
        return _out_of_memory(exc, path, memory_limit)
    if isinstance(exc, (duckdb.ConversionException, duckdb.InvalidInputException)):
        return InputError(
            f"a value in the archive could not be read ({first_line(exc)}); check column {time_column!r} "
            f"(timestamps) and {text_column!r} (UTF-8 text), fix or remove the row, and run the scan again"
        )
    if type(exc) is duckdb.Error or isinstance(exc, duckdb.SerializationException):
        return InputError(
            f"{visible(str(path))} is damaged: DuckDB could not read it ({first_line(exc)}). Restore it from a "
            "backup, or copy it again, and run the scan again."
        )
    if isinstance(exc, (duckdb.IOException, duckdb.TransactionException)):
        return StorageError(f"{writing}: {first_line(exc)}. {RETRY}")
    return None


def lock_held(path: Path, read_only: bool) -> bool:
    """Whether another process holds a lock on ``path`` that keeps this one from opening it: DuckDB takes an
    exclusive POSIX lock for writing and a shared one for reading. The probe lock, if taken, is released at once
    (this process holds no DuckDB lock on the file: its connect just failed)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): DuckDB locks differently there
        return False
    try:
        fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_NONBLOCK)
    except OSError:
        if read_only:
            return False
        return lock_held(path, read_only=True)
    try:
        fcntl.lockf(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EACCES, errno.EAGAIN)
    finally:
        os.close(fd)
    return False


def _out_of_memory(exc: duckdb.Error, path: Path, memory_limit: str) -> ConfigError:
    return ConfigError(
        f"DuckDB ran out of memory on {visible(str(path))} with memory_limit = {memory_limit!r} "
        f"({first_line(exc)}). Raise memory_limit in screener.toml (default 256MB) and run again; earlier results "
        "are intact."
    )
