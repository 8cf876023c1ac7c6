"""A scan run's life, shared by the local and the Ray engine: the source it reads, its record in
``screener_runs`` from begin to completed or failed, the scores and skipped rows it commits, and the finished run
opened again for reading (report, flags)."""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import duckdb
import numpy as np
import pyarrow as pa

from screener import aggregate, queries
from screener.errors import InputError, ModelError, StorageError
from screener.settings import Settings
from screener.dbfile import first_line
from screener.store import IN_MEMORY, Source, Store, is_parquet_source, json_dumps

log = logging.getLogger(__name__)

# The names the insert statements in sql/ read the Arrow tables under.
SCORES_VIEW = "screener_batch_scores"
SKIPPED_VIEW = "screener_batch_skipped"
EMPTY_TEXT = "empty_text"


@dataclass
class ScanResult:
    run_id: int
    model_name: str
    model_id: str
    as_of: str
    messages_total: int
    messages_scored: int
    messages_skipped: int
    skipped_by_reason: dict = field(default_factory=dict)
    users: int = 0
    users_flagged: int = 0
    seconds: float = 0.0
    rescored: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Run:
    """A run whose record is open: what :func:`complete` needs to close it."""

    run_id: int
    settings: Settings
    model_name: str
    model_id: str
    as_of: datetime
    rescore: bool
    started: float  # time.monotonic() when the scan started


class OpenedRun(NamedTuple):
    store: Store
    run_id: int


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def resolve_source(db: str | Path, source: str | None, settings: Settings) -> Source:
    """The messages table of the results database itself, or Parquet files (local, a glob or an object-storage
    URI)."""
    if source is None or Path(source) == Path(db):
        return Source(settings.table, parquet=False)
    if is_parquet_source(source):
        return Source(source, parquet=True)
    raise InputError(
        f"cannot read messages from {source!r}: expected Parquet files (a .parquet path or a glob), or the "
        "DuckDB file itself as the only argument"
    )


def check_new_source(db: str | Path, src: Source, settings: Settings) -> None:
    """Before a scan creates its results database ``db``, check its Parquet source (files, columns, types) in
    memory, so that a scan failing on its input leaves nothing behind."""
    if src.parquet and not Path(db).exists():
        with Store(IN_MEMORY, settings) as probe:
            probe.attach_source(src)


# Characters that show nothing: whitespace, controls (NUL...), format characters (zero-width space and joiners,
# the byte order mark, bidi marks, soft hyphen, tags), separators; and the letters and marks that Unicode lists as
# default-ignorable or that render as an empty cell (Hangul fillers, variation selectors, the combining grapheme
# joiner, Mongolian variation selectors, the blank Braille pattern).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
_INVISIBLE = frozenset("\u034f\u115f\u1160\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
                       + "".join(map(chr, range(0xFE00, 0xFE10)))
                       + "".join(map(chr, range(0xE0100, 0xE01F0))))


def _shows(ch: str) -> bool:
    return not ch.isspace() and ch not in _INVISIBLE and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES


def is_blank(text: str | None) -> bool:
    """A message with no text to score, recorded as skipped instead: None, empty, or made only of characters that
    show nothing (whitespace, NUL and other controls, zero-width and other invisible characters)."""
    return text is None or not any(map(_shows, text))


def prepare(store: Store, src: Source) -> None:
    """Create or check the schema, mark runs a killed process left 'running' as interrupted, attach the source."""
    store.ensure_schema()
    store.run("runs_mark_interrupted")
    store.attach_source(src)


def begin(store: Store, settings: Settings, src: Source, model_name: str, model_id: str, as_of: datetime,
          rescore: bool, started: float) -> Run:
    """Check the model against earlier scores, apply --rescore, and open the run record."""
    _check_model_change(store, model_id, model_name, rescore)
    if rescore:
        store.con.begin()
        store.run("scores_delete_model", {"model_id": model_id})
        store.run("skipped_delete_model", {"model_id": model_id})
        store.con.commit()
        log.info("--rescore: deleted earlier scores of model %s; scoring the whole archive again", model_id)
    run_id = int(store.scalar("run_next_id"))
    store.run("run_insert", {
        "run_id": run_id, "started_at": datetime.now(timezone.utc), "source": src.location,
        "model_name": model_name, "model_id": model_id, "as_of": as_of,
        "config": json_dumps(settings.as_dict()),
    })
    return Run(run_id, settings, model_name, model_id, as_of, rescore, started)


@contextmanager
def guard(store: Store, run: Run) -> Iterator[None]:
    """Record a failure in the run record and turn DuckDB errors into the documented screener errors."""
    try:
        yield
    except duckdb.Error as exc:
        fail(store, run.run_id, exc)
        raise store.classify(exc, f"the scan failed on {store.path}") or StorageError(
            f"the scan failed on {store.path}: {first_line(exc)}. Earlier results are intact; "
            "scores committed before the failure are kept and the next run resumes after them."
        ) from exc
    except BaseException as exc:
        fail(store, run.run_id, exc)
        raise


def complete(store: Store, run: Run, scored: int) -> ScanResult:
    """Aggregate the windows, store the flags and close the run record, once every score is committed."""
    quality = store.source_quality(run.as_of)
    aggregate.compute_user_stats(store, run.settings, run.model_id, run.as_of)
    skipped = {k: v for k, v in quality.items() if k != "total" and v}
    skipped.update({reason: int(n) for reason, n in
                    store.run("skipped_count", {"model_id": run.model_id}).fetchall()})
    store.con.begin()
    users_seen, users_flagged = aggregate.store_flags(store, run.run_id)
    result = ScanResult(
        run_id=run.run_id, model_name=run.model_name, model_id=run.model_id, as_of=run.as_of.isoformat(),
        messages_total=quality["total"], messages_scored=scored,
        messages_skipped=sum(skipped.values()), skipped_by_reason=skipped,
        users=users_seen, users_flagged=users_flagged,
        seconds=round(time.monotonic() - run.started, 3), rescored=run.rescore,
    )
    finish(store, result, "completed", None)
    store.con.commit()
    return result


def finish(store: Store, r: ScanResult, status: str, error: str | None) -> None:
    store.run("run_finish", {
        "run_id": r.run_id, "finished_at": datetime.now(timezone.utc), "status": status,
        "messages_total": r.messages_total, "messages_scored": r.messages_scored,
        "messages_skipped": r.messages_skipped, "skipped_by_reason": json_dumps(r.skipped_by_reason),
        "users_seen": r.users, "users_flagged": r.users_flagged, "seconds": r.seconds, "error": error,
    })


def fail(store: Store, run_id: int, exc: BaseException) -> None:
    """Best effort: record the failure; if even that fails (disk full), the run stays 'running' and the next
    scan marks it interrupted. The statement bypasses ``Store.run`` so that a write error stays a DuckDB error."""
    try:
        try:
            store.con.rollback()
        except duckdb.Error:
            pass
        store.con.execute(
            queries.load("run_finish"),
            {"run_id": run_id, "finished_at": datetime.now(timezone.utc), "status": "failed",
             "messages_total": None, "messages_scored": None, "messages_skipped": None,
             "skipped_by_reason": None, "users_seen": None, "users_flagged": None, "seconds": None,
             "error": f"{type(exc).__name__}: {exc}"[:2000]},
        )
    except duckdb.Error as second:
        log.error("could not record the failure of run %d: %s", run_id, second)


def _check_model_change(store: Store, model_id: str, name: str, rescore: bool) -> None:
    counts = dict(store.run("model_ids_scored").fetchall())
    others = [(mid, n) for mid, n in counts.items() if mid != model_id]
    if others and model_id not in counts and not rescore:
        listed = ", ".join(f"{mid} ({n} scores)" for mid, n in others)
        raise ModelError(
            f"{store.path} was scored with another model ({listed}); this run uses {name!r} ({model_id}). "
            "Windows never mix models, so the whole archive would be scored again: pass --rescore to do that, "
            "or --model to keep using the earlier model."
        )


def scores_table(message_ids: Sequence[str], model_id: str, run_id: int, p_negative: np.ndarray,
                 threshold: float) -> pa.Table:
    """Rows for ``screener_scores``: a message is labelled negative when P(negative) reaches the threshold."""
    n = len(message_ids)
    probs = np.asarray(p_negative, dtype=np.float32)
    return pa.table({
        "message_id": pa.array(message_ids, pa.string()),
        "model_id": pa.array([model_id] * n, pa.string()),
        "p_negative": pa.array(probs, pa.float32()),
        "label": pa.array(np.where(probs >= threshold, "negative", "positive").tolist(), pa.string()),
        "scored_at": pa.array([datetime.now(timezone.utc)] * n, pa.timestamp("us", tz="UTC")),
        "run_id": pa.array([run_id] * n, pa.int64()),
    })


def skipped_table(message_ids: Sequence[str], model_id: str, run_id: int) -> pa.Table:
    """Rows for ``screener_skipped``: blank messages, counted once and not read again."""
    n = len(message_ids)
    return pa.table({
        "message_id": pa.array(message_ids, pa.string()),
        "model_id": pa.array([model_id] * n, pa.string()),
        "reason": pa.array([EMPTY_TEXT] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.int64()),
    })


def commit_window(store: Store, scores: pa.Table, skipped: pa.Table) -> None:
    """One window's scores and skipped rows in one transaction, all or nothing."""
    con = store.con
    con.begin()
    try:
        con.register(SCORES_VIEW, scores)
        con.register(SKIPPED_VIEW, skipped)
        store.run("scores_insert")
        store.run("skipped_insert")
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        # Only after the rollback: DuckDB refuses to drop a view inside an aborted transaction.
        con.unregister(SCORES_VIEW)
        con.unregister(SKIPPED_VIEW)


@contextmanager
def open_run(db: str | Path, run_id: int | None = None, settings: Settings | None = None) -> Iterator[OpenedRun]:
    """The results database, read-only, with the archive attached the way run ``run_id`` read it (its table,
    columns and windows come from the run record); the latest completed run when ``run_id`` is None.
    ``settings`` sizes the connection (memory limit, threads)."""
    with Store(db, settings or Settings(), read_only=True) as store:
        store.ensure_schema()
        if run_id is None:
            run_id = store.scalar("run_latest")
            if run_id is None:
                raise InputError(f"{store.path} has no completed scan yet: run `screener scan {store.path}` first")
        try:
            record = aggregate.run_record(store, run_id)
        except KeyError:
            raise InputError(f"{store.path} has no run {run_id}") from None
        store.settings = Settings(**json.loads(record["config"]))
        store.attach_source(Source(record["source"], parquet=is_parquet_source(record["source"])))
        yield OpenedRun(store, int(run_id))
