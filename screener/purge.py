"""Erasure and retention: one person's data removed from screener's tables on request, and results older than a
retention period removed, each leaving one tombstone row in ``screener_erasures`` that holds counts, never personal
data.

Which tables hold a person's data is read from the database's own catalogue, not listed here, so a table a later
release adds is covered as long as it follows the naming convention every screener table follows:

- a ``user_id`` column: the person's rows are deleted (flags, decisions, ...);
- a ``message_id`` column: the rows of the person's messages are deleted (scores, skip records, ...). Scores carry
  no user id, so the person's message ids are looked up in the archives the recorded runs read;
- a VARCHAR column named in :data:`FREE_TEXT_COLUMNS` (run errors, decision notes): a cell of another row that names
  the person's user id or one of their message ids as a whole word, or quotes one of their messages, is replaced by
  :data:`ERASED_MARKER`.

Screener never deletes the archive's messages: they belong to the system that feeds it. As long as the archive
still holds a person's messages, the next scan scores them again; the tombstone says how many were left.

DuckDB marks deleted rows without overwriting their bytes at once; :func:`compact` rewrites the file so that they
are gone from it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb

from screener import queries, runs
from screener.errors import AlreadyRunningError, ConfigError, InputError, StorageError
from screener.settings import Settings
from screener.store import Source, Store, is_parquet_source

USER_COLUMN = "user_id"
MESSAGE_COLUMN = "message_id"
FREE_TEXT_COLUMNS = ("error", "note")
ERASED_MARKER = "[erased]"
# A free-text cell that contains one of the person's messages of at least this many characters quotes it; shorter
# texts ("ok", "thanks") are too common to tell a quote from a coincidence.
MIN_QUOTE_CHARS = 12
TOMBSTONES = "screener_erasures"
# Request ids are stored in clear in the tombstone, so they are opaque ticket numbers: no spaces, no "@".
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


@dataclass(frozen=True)
class Tombstone:
    """One row of ``screener_erasures``; ``already_done`` when an erasure request was carried out before."""

    erasure_id: int
    kind: str
    request_id: str | None
    erased_at: datetime
    cutoff: datetime | None
    removed: dict[str, int] = field(default_factory=dict)
    source_messages_left: int | None = None
    already_done: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["erased_at"] = self.erased_at.isoformat()
        out["cutoff"] = self.cutoff.isoformat() if self.cutoff else None
        return out


def open_results(db: str | Path) -> contextlib.AbstractContextManager[Store]:
    """The results database to purge (:func:`screener.runs.open_results`)."""
    return runs.open_results(db, "nothing to purge")


def erase_user(store: Store, user_id: str, request_id: str) -> Tombstone:
    """Remove every trace of ``user_id`` from screener's tables in one transaction and record the tombstone.

    A request id already carried out changes nothing and returns its tombstone with ``already_done``."""
    if not user_id:
        raise ConfigError("the user id to erase is empty")
    if not REQUEST_ID.fullmatch(request_id):
        raise ConfigError(
            f"request id {request_id!r} is not an opaque ticket id: expected 1 to 128 letters, digits or . _ : / -, "
            "starting with a letter or digit (it is stored in clear, so it must not name the person)")
    done = store.run("erasure_by_request", {"request_id": request_id}).fetchone()
    if done is not None:
        return replace(_tombstone(done), already_done=True)
    store.run("purge_messages_create")
    for _ in _attached_sources(store, since=None):
        store.run("purge_messages_of_user", {"user_id": user_id})
    left = int(store.scalar("purge_messages_count"))
    quotes = _quote_finder(user_id, store.run("purge_message_terms").fetchall())
    columns = _result_columns(store)
    removed: dict[str, int] = {}
    with _transaction(store):
        for table, cols in columns.items():
            if table == TOMBSTONES:
                continue
            if USER_COLUMN in cols:
                sql = queries.with_identifiers("rows_of_user_delete", _allowed(columns, table), table=table,
                                               user_id=USER_COLUMN)
                removed[table] = removed.get(table, 0) + _count(store, sql, {"user_id": user_id})
            if MESSAGE_COLUMN in cols:
                sql = queries.with_identifiers("rows_of_messages_delete", _allowed(columns, table), table=table,
                                               message_id=MESSAGE_COLUMN)
                removed[table] = removed.get(table, 0) + _count(store, sql)
        for table, cols in columns.items():
            for column in _free_text(cols):
                blanked = _blank_quoting_cells(store, columns, table, column, quotes)
                if blanked:
                    removed[f"{table}.{column}"] = blanked
        return _record(store, "user", request_id, None, removed, left)


def shortest_retention_days(settings: Settings) -> int:
    """The fewest days of messages the next scan's windows read: the long window, or the short window and the
    baseline before it, whichever reaches further back."""
    return max(settings.long_window_days, settings.short_window_days + settings.baseline_days)


def apply_retention(store: Store, days: int, now: datetime | None = None) -> Tombstone:
    """Remove the results about times more than ``days`` days before ``now`` (default: the current time), in one
    transaction, and record the tombstone. With ``cutoff = now - days``:

    - runs as of a time before the cutoff, and their flags;
    - scores and skip records of messages sent before the cutoff, and of messages that no archive of a kept run
      holds any more (the source has deleted them, or only removed runs read it);
    - later scans do not score messages sent before the cutoff (the retention horizon in ``screener_meta``).

    ``days`` must cover the windows of the newest run's settings, or the next scan would flag from partial windows.
    """
    now = _utc(now or datetime.now(timezone.utc))
    latest = store.scalar("latest_settings")
    settings = Settings(**json.loads(latest)) if latest else Settings()
    shortest = shortest_retention_days(settings)
    if days < shortest:
        raise ConfigError(
            f"a retention period of {days} days is shorter than the {shortest} days of messages the windows read "
            f"(long window {settings.long_window_days} days; short window {settings.short_window_days} plus baseline "
            f"{settings.baseline_days} days): keep at least {shortest} days, or shorten the windows first")
    cutoff = now - timedelta(days=days)
    store.run("purge_messages_create")
    for _ in _attached_sources(store, since=cutoff):
        store.run("kept_messages_add", {"cutoff": cutoff})
    horizon = store.scalar("retention_horizon_get")
    with _transaction(store):
        removed = {
            "screener_flags": int(store.scalar("retention_flags_delete", {"cutoff": cutoff})),
            "screener_runs": int(store.scalar("retention_runs_delete", {"cutoff": cutoff})),
            "screener_scores": int(store.scalar("retention_scores_delete")),
            "screener_skipped": int(store.scalar("retention_skipped_delete")),
        }
        if horizon is None or datetime.fromisoformat(horizon) < cutoff:
            store.run("retention_horizon_set", {"horizon": cutoff.isoformat()})
        return _record(store, "retention", None, cutoff, removed, None)


def compact(db: str | Path) -> None:
    """Rewrite the results database into a new file holding only the rows still present, and put it in place of
    the old one (same permissions), so deleted rows' bytes are gone from the file. Run it while no scan runs: the
    copy holds the file read-only, so a scan that starts meanwhile stops with exit code 4."""
    path = Path(db)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.compact")
    con = duckdb.connect()
    try:
        try:
            con.execute(queries.load("compact_attach_original"), {"path": str(path)})
            con.execute(queries.load("compact_attach_copy"), {"path": str(tmp)})
            con.execute(queries.load("compact_copy"))
            con.execute(queries.load("compact_detach_copy"))
        except duckdb.Error as exc:
            text = str(exc).splitlines()[0]
            if "lock" in text.lower() or "conflict" in text.lower():
                raise AlreadyRunningError(f"{path} is open in another process; compact it when no scan runs: {text}"
                                          ) from exc
            raise StorageError(f"compacting {path} failed ({text}); the file was left as it was") from exc
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)


# --- helpers --------------------------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _attached_sources(store: Store, since: datetime | None) -> Iterator[Source]:
    """Attach, one after the other, every archive the runs (as of ``since`` or later) read, with the columns they
    read it with, as ``screener_source``. An archive that cannot be read stops the purge before it changes
    anything: without it, the person's messages (and so their scores) cannot be found."""
    seen = set()
    saved = store.settings
    try:
        for location, config, run_id in store.run("run_sources", {"since": since}).fetchall():
            settings = Settings(**json.loads(config))
            key = (location, settings.table, settings.id_column, settings.user_column, settings.time_column,
                   settings.text_column)
            if key in seen:
                continue
            seen.add(key)
            store.settings = settings
            source = Source(location, parquet=is_parquet_source(location))
            try:
                store.attach_source(source)
            except InputError as exc:
                raise InputError(
                    f"{exc}. Run {run_id} read this archive; the purge needs it to find which scores belong to "
                    "whom, so nothing was changed. Make it readable at that place and run the purge again."
                ) from exc
            yield source
    finally:
        store.settings = saved


def _result_columns(store: Store) -> dict[str, dict[str, str]]:
    columns: dict[str, dict[str, str]] = {}
    for table, column, data_type in store.run("result_columns").fetchall():
        columns.setdefault(table, {})[column] = data_type
    return columns


def _free_text(cols: dict[str, str]) -> list[str]:
    return [c for c in FREE_TEXT_COLUMNS if cols.get(c, "").startswith("VARCHAR")]


def _allowed(columns: dict[str, dict[str, str]], table: str) -> dict[str, set[str]]:
    """The identifiers a purge statement may name: screener's tables and the columns of ``table``, as the
    catalogue lists them."""
    names = set(columns[table])
    return {"table": set(columns), "user_id": names, "message_id": names, "text": names}


def _execute(store: Store, sql: str, params: dict | None = None):
    return store.con.execute(sql, params or {})


def _count(store: Store, sql: str, params: dict | None = None) -> int:
    return int(_execute(store, sql, params).fetchone()[0])


def _quote_finder(user_id: str, messages: list[tuple[str, str | None]]) -> Callable[[str], bool]:
    """Whether a text names the user id or one of the message ids as a whole word, or quotes a message."""
    words = sorted({user_id, *(mid for mid, _ in messages)}, key=len, reverse=True)
    named = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)")
    quoted = [text for _, text in messages if text and len(text.strip()) >= MIN_QUOTE_CHARS]
    return lambda cell: bool(named.search(cell)) or any(text in cell for text in quoted)


def _blank_quoting_cells(store: Store, columns, table: str, column: str, quotes: Callable[[str], bool]) -> int:
    allowed = _allowed(columns, table)
    cells = _execute(store, queries.with_identifiers("text_cells", allowed, table=table, text=column)).fetchall()
    rowids = [rowid for rowid, text in cells if quotes(text)]
    if rowids:
        _execute(store, queries.with_identifiers("text_cells_blank", allowed, table=table, text=column),
                 {"marker": ERASED_MARKER, "rowids": rowids})
    return len(rowids)


@contextlib.contextmanager
def _transaction(store: Store) -> Iterator[None]:
    """All or nothing: any failure rolls every change back and is reported as a storage error."""
    store.con.begin()
    try:
        yield
        store.con.commit()
    except BaseException as exc:
        with contextlib.suppress(duckdb.Error):  # a failed commit has already ended the transaction
            store.con.rollback()
        if isinstance(exc, duckdb.Error):
            raise StorageError(f"the purge of {store.path} failed ({str(exc).splitlines()[0]}); nothing was "
                               "removed. Fix the cause (free disk space, a constraint of the table named) and "
                               "run it again.") from exc
        raise


def _record(store: Store, kind: str, request_id: str | None, cutoff: datetime | None, removed: dict[str, int],
            left: int | None) -> Tombstone:
    tombstone = Tombstone(int(store.scalar("erasure_next_id")), kind, request_id, datetime.now(timezone.utc),
                          cutoff, removed, left)
    store.run("erasure_insert", {
        "erasure_id": tombstone.erasure_id, "kind": kind, "request_id": request_id,
        "erased_at": tombstone.erased_at, "cutoff": cutoff, "removed": json.dumps(removed, sort_keys=True),
        "source_messages_left": left,
    })
    return tombstone


def _tombstone(row: tuple) -> Tombstone:
    erasure_id, kind, request_id, erased_at, cutoff, removed, left = row
    return Tombstone(int(erasure_id), kind, request_id, _utc(erased_at), _utc(cutoff) if cutoff else None,
                     json.loads(removed), left)
