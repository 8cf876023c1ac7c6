"""The results database (DuckDB) and the archive it reads: schema and its migrations, locking, source view.

The schema is built by the numbered migrations in ``sql/migrations/``: ``NNN_<what>.sql`` brings a database from
version NNN-1 to NNN (``001_create_tables`` creates version 1). A new database gets all of them, an older one the
ones it lacks, in one transaction either way, so an upgrade is complete or leaves the file as it was.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from screener import dbfile, objstore, queries
from screener.errors import InputError, SchemaError, ScreenerError
from screener.settings import Settings, memory_bytes

log = logging.getLogger(__name__)

PARQUET_VIEW = "screener_parquet"
ARCHIVE_VIEW = "screener_archive_messages"
IN_MEMORY = ":memory:"

# Cached table blocks a scan lets DuckDB evict once they pass this (Store.release_cached_blocks), and the memory
# it leaves free meanwhile.
CACHED_BLOCKS_BYTES = 4 * 2**20
RELEASE_MARGIN_BYTES = 2 * 2**20
# Committed rows stay in memory until a checkpoint writes them to the file, which DuckDB runs once the write-ahead
# log reaches this (its own default is 16 MB): at 8 MB a scan's memory swings by half as much between checkpoints,
# for a results file about 1 MB larger a million scores (more, smaller writes below 8 MB).
CHECKPOINT_THRESHOLD = "8MB"

_TIME_TYPES = ("TIMESTAMP", "DATE", "VARCHAR")
_TEXT_TYPES = ("VARCHAR",)


_MIGRATION_NAME = re.compile(r"^(?P<version>\d{3})_[a-z0-9_]+$")


def migrations() -> list[tuple[int, str]]:
    """(schema version, statement name) of every migration, oldest first; versions run 1, 2, ... without gaps."""
    found = []
    for name in queries.names("migrations"):
        match = _MIGRATION_NAME.match(name)
        if not match:
            raise ValueError(f"sql/migrations/{name}.sql: a migration's name must be NNN_<what>")
        found.append((int(match.group("version")), name))
    found.sort()
    if [version for version, _ in found] != list(range(1, len(found) + 1)):
        raise ValueError(f"sql/migrations/ must number its files 001, 002, ... without gaps, found {found}")
    return found


SCHEMA_VERSION = migrations()[-1][0]


def is_parquet_source(source: str) -> bool:
    """Parquet files: a .parquet path, a glob, or an object-storage URI (s3://, gs://)."""
    return objstore.is_uri(source) or source.lower().endswith(".parquet") or any(ch in source for ch in "*?[")


@dataclass
class Source:
    """Where the messages come from: a table of the results database, Parquet files, or a table of another DuckDB
    file (``archive``), attached read-only."""

    location: str  # the table name, the Parquet path/glob, or the DuckDB archive's path
    parquet: bool
    archive: bool = False

    @property
    def kind(self) -> str:
        """What the run record's ``source_kind`` says: ``table``, ``parquet`` or ``duckdb``."""
        return "parquet" if self.parquet else "duckdb" if self.archive else "table"

    @classmethod
    def recorded(cls, location: str, kind: str | None) -> "Source":
        """The source a run record names; runs recorded before ``source_kind`` existed read a table or Parquet."""
        if kind is None:
            kind = "parquet" if is_parquet_source(location) else "table"
        return cls(location, parquet=kind == "parquet", archive=kind == "duckdb")


class Store:
    """One DuckDB connection for writing and a second for streaming reads, with the source view on both."""

    def __init__(self, path: str | Path, settings: Settings, read_only: bool = False) -> None:
        self.path = Path(path)
        self.settings = settings
        self.read_only = read_only
        in_memory = str(path) == IN_MEMORY
        if not in_memory:
            dbfile.check_path(self.path, read_only)
        existed = not in_memory and self.path.exists()
        config: dict[str, Any] = {"memory_limit": settings.memory_limit, "threads": settings.duckdb_threads(),
                                  "checkpoint_threshold": CHECKPOINT_THRESHOLD}
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only, config=config)
        except duckdb.Error as exc:
            raise dbfile.open_error(exc, self.path, existed, read_only, settings.memory_limit) from exc
        try:
            if existed:
                dbfile.check_intact(self.con, self.path)
            self.run("session_setup")
        except BaseException:
            self.con.close()
            raise
        self.source: Source | None = None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- statements -------------------------------------------------------------------------------------------
    def run(self, name: str, params: dict | None = None, con=None):
        try:
            return (con or self.con).execute(queries.load(name), params or {})
        except duckdb.Error as exc:
            error = self.classify(exc, f"writing to {self.path} failed while running {name}")
            if error is None:
                raise
            raise error from exc

    def classify(self, exc: duckdb.Error, writing: str) -> ScreenerError | None:
        """What a DuckDB error on this database means (see :mod:`screener.dbfile`); ``writing`` opens the
        message of a write failure."""
        s = self.settings
        return dbfile.classify(exc, self.path, writing, memory_limit=s.memory_limit, time_column=s.time_column,
                               text_column=s.text_column)

    def scalar(self, name: str, params: dict | None = None, con=None):
        row = self.run(name, params, con).fetchone()
        return None if row is None else row[0]

    # --- schema -----------------------------------------------------------------------------------------------
    def _tables(self) -> set[str]:
        return {r[0] for r in self.run("tables_list").fetchall()}

    def schema_version(self) -> int | None:
        if "screener_meta" not in self._tables():
            return None
        value = self.scalar("schema_version_get")
        try:
            return None if value is None else int(value)
        except ValueError:
            raise SchemaError(f"{self.path}: screener_meta holds schema_version {value!r}, not a number") from None

    def ensure_schema(self) -> None:
        """Bring the database to ``SCHEMA_VERSION``: create it when new, upgrade it in place when older (every
        result kept), refuse it when newer. A read-only database is never changed, so an older one is refused."""
        version = self.schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has screener schema version {version}; this release reads version {SCHEMA_VERSION}. "
                "Upgrade screener to read it."
            )
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            if version is None:
                raise InputError(f"{self.path} has no screener results: run `screener scan` on it first")
            raise SchemaError(
                f"{self.path} has screener schema version {version}, older than this release's {SCHEMA_VERSION}, "
                f"and was opened read-only. Run `screener scan {self.path}` once: it upgrades the file in place and "
                "keeps every result."
            )
        self._migrate(version or 0)

    def _migrate(self, version: int) -> None:
        pending = [(number, name) for number, name in migrations() if number > version]
        self.con.begin()
        try:
            for _, name in pending:
                self.con.execute(queries.load(name))
            self.con.execute(queries.load("schema_version_set"), {"version": str(SCHEMA_VERSION)})
            self.con.commit()
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):  # a failed commit has already ended the transaction
                self.con.rollback()
            error = self.classify(exc, f"writing to {self.path} failed while upgrading its schema (the file was "
                                       "left as it was)")
            if error is not None:
                raise error from exc
            raise SchemaError(
                f"{self.path}: upgrading screener schema version {version} to {SCHEMA_VERSION} failed "
                f"({str(exc).splitlines()[0]}); the file was left at version {version}."
            ) from exc
        if version:
            log.info("upgraded %s from screener schema version %d to %d", self.path, version, SCHEMA_VERSION)

    # --- source -----------------------------------------------------------------------------------------------
    def attach_source(self, source: Source, con=None) -> None:
        """Create the canonical ``screener_source`` view on ``con`` (default: the main connection)."""
        con = con or self.con
        s = self.settings
        if source.parquet and objstore.is_uri(source.location):
            # DuckDB's S3/GCS extensions are downloaded at run time; pyarrow's filesystems are installed.
            fs, files = objstore.expand(source.location)
            con.register(PARQUET_VIEW, objstore.dataset(fs, files))
            table = PARQUET_VIEW
        elif source.parquet:
            dbfile.require_utf8(source.location)
            if not glob.glob(source.location):
                raise InputError(f"no Parquet files match {source.location!r}: expected a file or a glob such as "
                                 "'archive/*.parquet'")
            try:
                # A registered relation lives in the connection only, so a read-only open can attach it again.
                con.register(PARQUET_VIEW, con.read_parquet(source.location, union_by_name=True))
            except duckdb.Error as exc:
                raise InputError(f"cannot read Parquet {source.location!r}: {str(exc).splitlines()[0]}") from exc
            table = PARQUET_VIEW
        elif source.archive:
            table = self._attach_archive(source, con)
        else:
            table = source.location
        qualified = self._resolve_table(con, table)
        catalog, schema, name = qualified
        columns = dict(con.execute(queries.load("table_columns"),
                                   {"catalog": catalog, "schema": schema, "table": name}).fetchall())
        wanted = {"message_id": s.id_column, "user_id": s.user_column, "sent_at": s.time_column,
                  "text": s.text_column}
        missing = [f"{slot} -> {col!r}" for slot, col in wanted.items() if col not in columns]
        if missing:
            raise InputError(
                f"{self._where(source)}: missing column(s) {', '.join(missing)}; found columns {sorted(columns)}. "
                "Name the columns with --id-column/--user-column/--time-column/--text-column or screener.toml."
            )
        checks = {"sent_at": (s.time_column, _TIME_TYPES), "text": (s.text_column, _TEXT_TYPES)}
        for slot, (col, types) in checks.items():
            if not columns[col].startswith(types):
                raise InputError(
                    f"{self._where(source)}: column {col!r} ({slot}) has type {columns[col]}; expected one of "
                    f"{', '.join(types)}. Convert it (e.g. CAST) in a view and point --table at the view."
                )
        allowed_columns = set(columns)
        allowed = {"table": {qualified}, "message_id": allowed_columns, "user_id": allowed_columns,
                   "sent_at": allowed_columns, "text": allowed_columns}
        idents = dict(table=qualified, message_id=s.id_column, user_id=s.user_column, sent_at=s.time_column,
                      text=s.text_column)
        con.execute(queries.with_identifiers("source_rows_view", allowed, **idents))
        con.execute(queries.load("source_view"))
        self.source = source
        self._source_sql_idents = (allowed, idents)

    def _attach_archive(self, source: Source, con) -> str:
        """Attach the DuckDB archive read-only and put its messages table (``table``, or ``schema.table``) behind
        ``ARCHIVE_VIEW``."""
        try:
            con.execute(queries.load("archive_attach"), {"path": source.location})
        except duckdb.Error as exc:
            raise InputError(
                f"cannot open the archive {source.location} read-only: {str(exc).splitlines()[0]}. Expected a "
                "DuckDB file with a messages table; if another process is writing it, scan after it has finished."
            ) from exc
        found = [tuple(r) for r in con.execute(queries.load("archive_tables")).fetchall()]
        wanted = self.settings.table
        schema, _, name = wanted.rpartition(".")
        matches = ([(schema, name)] if schema and (schema, name) in found else
                   [("main", wanted)] if ("main", wanted) in found else
                   [pair for pair in found if pair[1] == wanted])
        if len(matches) != 1:
            listed = sorted(n if s == "main" else f"{s}.{n}" for s, n in found)
            problem = f"table {wanted!r} is in several schemas" if matches else f"no table {wanted!r}"
            raise InputError(
                f"{source.location}: {problem}. Expected the messages table (set `table` in screener.toml or "
                f"--table, schema-qualified as schema.table where needed); found tables: {listed or 'none'}"
            )
        [(schema, name)] = matches
        allowed = {"schema": {s for s, _ in found}, "table": {n for _, n in found}}
        con.execute(queries.with_identifiers("archive_view", allowed, schema=schema, table=name))
        return ARCHIVE_VIEW
    def _resolve_table(self, con, table: str) -> tuple[str, str, str]:
        """(catalog, schema, name) of the table or view ``table`` names, as DuckDB would resolve it: a name on
        the search path (the temp schema, then the current schema; a name may itself contain dots), else a
        ``schema.table`` or ``catalog.schema.table`` name. The same name in two other schemas is not guessed."""
        parts = tuple(table.split("."))
        rows = con.execute(queries.load("table_candidates"), {"name": table, "last": parts[-1]}).fetchall()
        exact = [tuple(r[:3]) for r in rows if r[2] == table and r[3]]
        if exact:
            return exact[0]
        qualified = [tuple(r[:3]) for r in rows if 1 < len(parts) <= 3 and tuple(r[:3])[-len(parts):] == parts]
        if len(qualified) == 1:
            return qualified[0]
        elsewhere = sorted(".".join(r[:3] if not r[4] else r[1:3]) for r in rows if r[2] == parts[-1])
        if elsewhere:
            if len(qualified) > 1:
                found = f"{table!r} names more than one table"
            else:
                found = f"no table {table!r}" + (" in the main schema (DuckDB's search path)" * (len(parts) == 1))
            raise InputError(
                f"{self.path}: {found}; found {', '.join(elsewhere)}. Name one with its schema, e.g. --table "
                f"{elsewhere[0]} (or `table` in screener.toml)."
            )
        found = sorted(t for t in self._tables() if not t.startswith("screener_"))
        raise InputError(
            f"{self.path}: no table {table!r}. Expected the messages table (set `table` in screener.toml or "
            f"--table); found tables: {found or 'none'}"
        )


    def _where(self, source: Source) -> str:
        if source.parquet:
            return f"Parquet {source.location!r}"
        if source.archive:
            return f"{source.location} table {self.settings.table!r}"
        return f"{self.path} table {source.location!r}"

    def source_accounting(self, model_id: str, as_of: datetime) -> dict[str, dict[str, int]]:
        """Every archive row once, by category (``scored``, ``not_scored``) and reason; see
        ``sql/source/source_accounting.sql``. Reasons with no rows are left out."""
        allowed, idents = self._source_sql_idents
        rows = self.con.execute(queries.with_identifiers("source_accounting", allowed, **idents),
                                {"model_id": model_id, "as_of": as_of}).fetchall()
        out: dict[str, dict[str, int]] = {"scored": {}, "not_scored": {}}
        for category, reason, n in rows:
            if n:
                out[category][reason] = int(n)
        return out

    def reader_cursor(self):
        """A second connection for streaming the pending messages while the first one writes."""
        cur = self.con.cursor()
        cur.execute(queries.load("session_setup"))
        self.attach_source(self.source, con=cur)
        return cur

    def release_cached_blocks(self) -> bool:
        """Let DuckDB evict the blocks of persistent tables it keeps cached, once they pass ``CACHED_BLOCKS_BYTES``.

        DuckDB keeps every block it has written or read in memory until ``memory_limit`` is reached, so without
        this a scan's memory grows with the scores it writes (45 MB a million) until the limit; the blocks are on
        disk and come back when read. DuckDB has no statement for evicting them; lowering the limit to what is in
        use besides them does it (DuckDB refuses where pinned memory is larger, and then nothing changes), and the
        limit goes back at once. ``RELEASE_MARGIN_BYTES`` stays free for the other connection's work meanwhile.
        Returns whether blocks were released."""
        used, cached = self.run("buffer_memory").fetchone()
        target = used - cached + RELEASE_MARGIN_BYTES
        if cached < CACHED_BLOCKS_BYTES or target >= memory_bytes(self.settings.memory_limit):
            return False
        try:
            self.con.execute(queries.load("memory_limit_set"), {"limit": f"{target}B"})
            return True
        except duckdb.OutOfMemoryException:
            return False
        finally:
            self.con.execute(queries.load("memory_limit_set"), {"limit": self.settings.memory_limit})

    def stream(self, name: str, rows: int, params: dict | None = None, con=None):
        """The record batches of statement ``name`` on ``con`` (default: this store's connection), at most ``rows``
        rows each. An error DuckDB meets while the stream is read (a damaged block, a value it cannot cast) reaches
        Python through Arrow as an OSError carrying DuckDB's message; it comes back as the DuckDB exception it was,
        so the scan reports it as it would a failed statement (exit codes in README)."""
        try:
            yield from (con or self.con).sql(queries.load(name), params=params).to_arrow_reader(rows)
        except OSError as exc:
            error = _STREAMED_ERRORS.get(str(exc).partition(": ")[0])
            if error is None:
                raise
            raise error(str(exc)) from exc

    def pending_messages(self, model_id: str, rows: int, con=None, prepared: bool = False):
        """The messages without a score or skip record for ``model_id`` (``message_id``, ``text``), as record
        batches of at most ``rows`` rows, on ``con`` (default: this store's connection); ``prepared``: the
        candidates are already on ``con`` (:meth:`prepare_candidates`)."""
        con = con or self.con
        if not prepared:
            self.prepare_candidates(con)
        return self.stream("pending_messages", rows, {"model_id": model_id}, con)

    def pending_count(self, model_id: str, con=None, prepared: bool = False) -> int:
        """How many messages :meth:`pending_messages` streams."""
        con = con or self.con
        if not prepared:
            self.prepare_candidates(con)
        [(count,)] = self.run("pending_count", {"model_id": model_id}, con).fetchall()
        return int(count)

    def prepare_candidates(self, con) -> None:
        """Put ``screener_source_candidates`` on ``con``: the source view's rows, streamable. Only the ids that occur
        more than once need the source view's window, so their hashes are found here, 8 bytes a row; a window over
        the whole archive would hold every row's text until the last one is read."""
        import numpy as np
        import pyarrow as pa

        chunks = [batch.column(0).to_numpy() for batch in self.stream("source_id_hashes", 1 << 17, con=con)]
        hashes = np.sort(np.concatenate(chunks)) if chunks else np.empty(0, dtype=np.uint64)
        repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        con.register("screener_duplicate_ids", pa.table({"h": pa.array(repeated, type=pa.uint64())}))
        con.execute(queries.load("source_candidates_view"))


# The DuckDB exception behind each error kind DuckDB names at the start of its message.
_STREAMED_ERRORS = {"Data Corruption Error": duckdb.Error, "Out of Memory Error": duckdb.OutOfMemoryException,
                    "Conversion Error": duckdb.ConversionException,
                    "Invalid Input Error": duckdb.InvalidInputException, "IO Error": duckdb.IOException,
                    "Serialization Error": duckdb.SerializationException}


def json_dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, allow_nan=False)
