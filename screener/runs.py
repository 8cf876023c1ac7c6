"""A scan run's life, shared by the local and the Ray engine: the source it reads, its record in
``screener_runs`` from begin to completed, failed or interrupted, the scores and skipped rows it commits, the
accounting of the archive's rows and its freshness, and the finished run opened again for reading (report, flags)."""

from __future__ import annotations

import json
import logging
import os
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import duckdb
import numpy as np
import pyarrow as pa

from screener import aggregate, interrupts, queries, states
from screener.classifiers.base import BINARY_LABELS, NEGATIVE, NEUTRAL, POSITIVE, THREE_WAY_LABELS
from screener.errors import InputError, ModelError, StorageError
from screener.settings import Settings
from screener.dbfile import first_line
from screener.store import IN_MEMORY, Source, Store, is_parquet_source, json_dumps

log = logging.getLogger(__name__)

# The names the insert statements in sql/ read the Arrow tables under.
SCORES_VIEW = "screener_batch_scores"
SKIPPED_VIEW = "screener_batch_skipped"
EMPTY_TEXT = "empty_text"

# Freshness of the source (the ``freshness`` column): its newest message against the freshness limits.
FRESH, STALE_WARN, STALE_ERROR, UNCHECKED = "fresh", "warn", "error", "off"


@dataclass
class ScanResult:
    """A completed run. The archive's rows add up: ``messages_total`` = ``messages_with_score`` (scored, in this
    run or earlier) + ``messages_skipped`` (not scored, one reason per row in ``skipped_by_reason``); of the scored,
    ``messages_not_aggregated`` have no user, no time or a time after as-of (``not_aggregated_by_reason``)."""

    run_id: int
    model_name: str
    model_id: str
    as_of: str
    messages_total: int
    messages_scored: int  # scored by this run
    messages_skipped: int
    skipped_by_reason: dict = field(default_factory=dict)
    messages_with_score: int = 0
    messages_not_aggregated: int = 0
    not_aggregated_by_reason: dict = field(default_factory=dict)
    users: int = 0
    users_flagged: int = 0
    seconds: float = 0.0
    rescored: bool = False
    # The model's false-positive rate from staff decisions so far (see screener.states).
    false_positive: dict = field(default_factory=dict)
    # Freshness: the archive's newest message, its age at as-of, the messages newer than the previous run's newest,
    # the messages in the flag window, and FRESH, STALE_WARN, STALE_ERROR or UNCHECKED.
    newest_message_at: str | None = None
    newest_message_age_hours: float | None = None
    messages_new: int = 0
    messages_in_window: int = 0
    freshness: str = UNCHECKED

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
    source: str = ""


class OpenedRun(NamedTuple):
    store: Store
    run_id: int


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def resolve_source(db: str | Path, source: str | None, settings: Settings) -> Source:
    """The messages table of the results database itself; Parquet files (local, a glob or an object-storage URI);
    or the messages table of another DuckDB file, which is then only ever opened read-only."""
    if source is None or _same_file(source, db):
        return Source(settings.table, parquet=False)
    if is_parquet_source(source):
        return Source(source, parquet=True)
    path = Path(source)
    if path.is_dir():
        raise InputError(f"the archive {source} is a folder: expected a DuckDB file with a messages table, or "
                         "Parquet files (a .parquet path or a quoted glob such as 'archive/*.parquet')")
    if not path.is_file():
        raise InputError(f"the archive {source} does not exist: expected a DuckDB file with a messages table, or "
                         "Parquet files (a .parquet path or a quoted glob such as 'archive/*.parquet')")
    return Source(str(path.resolve()), parquet=False, archive=True)


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
        "source_kind": src.kind, "model_name": model_name, "model_id": model_id, "as_of": as_of,
        "config": json_dumps(settings.as_dict()),
    })
    return Run(run_id, settings, model_name, model_id, as_of, rescore, started, src.location)


@contextmanager
def guard(store: Store, run: Run) -> Iterator[None]:
    """Record a failure or an interruption (SIGINT, SIGTERM) in the run record and turn DuckDB errors into the
    documented screener errors."""
    try:
        yield
    except BaseException as exc:
        stop = interrupts.stopping(exc)
        if stop is not None:
            fail(store, run.run_id, stop, status="interrupted")
            if stop is exc:
                raise
            raise stop from exc
        fail(store, run.run_id, exc)
        if isinstance(exc, duckdb.Error):
            raise store.classify(exc, f"the scan failed on {store.path}") or StorageError(
                f"the scan failed on {store.path}: {first_line(exc)}. Earlier results are intact; "
                "scores committed before the failure are kept and the next run resumes after them."
            ) from exc
        raise


def freshness_level(settings: Settings, age_hours: float | None) -> str:
    """FRESH, STALE_WARN or STALE_ERROR for a newest message ``age_hours`` old at as-of (None: the archive holds
    no message with a time, which is as stale as it gets); UNCHECKED when both limits are 0."""
    if not settings.freshness_warn_hours and not settings.freshness_error_hours:
        return UNCHECKED
    if settings.freshness_error_hours and (age_hours is None or age_hours > settings.freshness_error_hours):
        return STALE_ERROR
    if settings.freshness_warn_hours and (age_hours is None or age_hours > settings.freshness_warn_hours):
        return STALE_WARN
    return FRESH


def freshness_message(r: ScanResult, settings: Settings) -> str:
    """One line on how stale the source is, for stderr and the exit-8 error."""
    setting = "freshness_error_hours" if r.freshness == STALE_ERROR else "freshness_warn_hours"
    if r.newest_message_at is None:
        where = "the archive holds no message with a time"
    else:
        where = (f"the archive's newest message is from {r.newest_message_at}, "
                 f"{r.newest_message_age_hours:.1f} hours before as-of {r.as_of}")
    return (f"stale source: {where} ({setting} = {getattr(settings, setting):g}); "
            f"{r.messages_new} new messages since the previous run. Check the export that feeds the archive.")


def _freshness(store: Store, run: Run) -> dict[str, Any]:
    since = store.scalar("run_previous", {"source": run.source, "run_id": run.run_id})
    newest, in_window, new = store.run("source_freshness", {
        "as_of": run.as_of, "short_days": run.settings.short_window_days, "since": since}).fetchone()
    age = None if newest is None else (run.as_of - utc(newest)).total_seconds() / 3600
    return {"newest_message_at": None if newest is None else utc(newest).isoformat(),
            "newest_message_age_hours": None if age is None else round(age, 3),
            "messages_new": int(new), "messages_in_window": int(in_window),
            "freshness": freshness_level(run.settings, age)}


def complete(store: Store, run: Run, scored: int) -> ScanResult:
    """Aggregate the windows, store the flags and close the run record, once every score is committed."""
    rows = store.source_accounting(run.model_id, run.as_of)
    freshness = _freshness(store, run)
    aggregate.compute_user_stats(store, run.settings, run.model_id, run.as_of)
    not_aggregated = {k: v for k, v in rows["scored"].items() if k != "aggregated"}
    store.con.begin()
    users_seen, users_flagged = aggregate.store_flags(store, run.run_id)
    result = ScanResult(
        run_id=run.run_id, model_name=run.model_name, model_id=run.model_id, as_of=run.as_of.isoformat(),
        messages_total=sum(rows["scored"].values()) + sum(rows["not_scored"].values()), messages_scored=scored,
        messages_skipped=sum(rows["not_scored"].values()), skipped_by_reason=rows["not_scored"],
        messages_with_score=sum(rows["scored"].values()),
        messages_not_aggregated=sum(not_aggregated.values()), not_aggregated_by_reason=not_aggregated,
        users=users_seen, users_flagged=users_flagged,
        seconds=round(time.monotonic() - run.started, 3), rescored=run.rescore, **freshness,
        false_positive=states.false_positive_rate(store, run.model_id),
    )
    finish(store, result, "completed", None)
    store.con.commit()
    if result.freshness == STALE_WARN:
        log.warning(freshness_message(result, run.settings))
    return result


def finish(store: Store, r: ScanResult, status: str, error: str | None) -> None:
    store.run("run_finish", {
        "run_id": r.run_id, "finished_at": datetime.now(timezone.utc), "status": status,
        "messages_total": r.messages_total, "messages_scored": r.messages_scored,
        "messages_skipped": r.messages_skipped, "skipped_by_reason": json_dumps(r.skipped_by_reason),
        "messages_with_score": r.messages_with_score, "messages_not_aggregated": r.messages_not_aggregated,
        "not_aggregated_by_reason": json_dumps(r.not_aggregated_by_reason),
        "newest_message_at": r.newest_message_at, "messages_new": r.messages_new,
        "messages_in_window": r.messages_in_window, "freshness": r.freshness,
        "users_seen": r.users, "users_flagged": r.users_flagged, "seconds": r.seconds, "error": error,
    })


def fail(store: Store, run_id: int, exc: BaseException, status: str = "failed") -> None:
    """Best effort: close a run that is still running as ``status`` (failed, or interrupted by a signal); if even
    that fails (disk full), the run stays 'running' and the next scan marks it interrupted. The statement bypasses
    ``Store.run`` so that a write error stays a DuckDB error."""
    try:
        try:
            store.con.rollback()
        except duckdb.Error:
            pass
        store.con.execute(
            queries.load("run_abort"),
            {"run_id": run_id, "finished_at": datetime.now(timezone.utc), "status": status,
             "error": f"{type(exc).__name__}: {exc}"[:2000]},
        )
    except duckdb.Error as second:
        log.error("could not record the end of run %d: %s", run_id, second)


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


def class_columns(proba: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """P(negative), P(neutral) and P(positive) from a classifier's ``(n, len(labels))`` probabilities. A binary
    model scores negative against the rest: it has no P(neutral), and its P(positive) is 1 - P(negative)."""
    proba = np.asarray(proba, dtype=np.float32).reshape(-1, len(labels))
    labels = list(labels)
    if sorted(labels) == sorted(BINARY_LABELS):
        p_negative = np.ascontiguousarray(proba[:, labels.index(NEGATIVE)])
        return p_negative, None, np.float32(1.0) - p_negative
    if sorted(labels) == sorted(THREE_WAY_LABELS):
        p_negative, p_neutral, p_positive = (np.ascontiguousarray(proba[:, labels.index(name)])
                                             for name in THREE_WAY_LABELS)
        return p_negative, p_neutral, p_positive
    raise ModelError(f"the model's classes are {tuple(labels)}; screener stores the classes {BINARY_LABELS} or "
                     f"{THREE_WAY_LABELS}: name the model's classes so in its manifest")


def class_labels(p_negative: np.ndarray, p_neutral: np.ndarray | None, p_positive: np.ndarray,
                 threshold: float) -> np.ndarray:
    """The stored label: negative only when P(negative) is the largest class probability (a tie counts as
    negative) and reaches ``threshold``, else the larger of neutral and positive (a tie counts as neutral).
    The SQL macro ``screener_label`` (sql/schema/session_setup.sql) is the same rule for the flag windows."""
    neutral = np.full_like(p_negative, -1.0) if p_neutral is None else p_neutral
    negative = (p_negative.astype(np.float64) >= threshold) & (p_negative >= neutral) & (p_negative >= p_positive)
    return np.where(negative, NEGATIVE, np.where(neutral >= p_positive, NEUTRAL, POSITIVE))


def scores_table(message_ids: Sequence[str], model_id: str, run_id: int, proba: np.ndarray,
                 labels: Sequence[str], threshold: float) -> pa.Table:
    """Rows for ``screener_scores`` from the classifier's probabilities (columns in ``labels`` order): every class
    probability (P(neutral) null for a binary model) and the label :func:`class_labels` gives."""
    n = len(message_ids)
    p_negative, p_neutral, p_positive = class_columns(proba, labels)
    return pa.table({
        "message_id": pa.array(message_ids, pa.string()),
        "model_id": pa.array([model_id] * n, pa.string()),
        "p_negative": pa.array(p_negative, pa.float32()),
        "p_neutral": pa.nulls(n, pa.float32()) if p_neutral is None else pa.array(p_neutral, pa.float32()),
        "p_positive": pa.array(p_positive, pa.float32()),
        "label": pa.array(class_labels(p_negative, p_neutral, p_positive, threshold).tolist(), pa.string()),
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
def open_results(db: str | Path, empty_hint: str) -> Iterator[Store]:
    """A results database written by ``screener scan``, open for writing and upgraded to this release's schema.
    Never creates one: a missing file, or one without screener tables (``empty_hint`` says what to do), is an
    input error."""
    path = Path(db)
    if not path.is_file():
        raise InputError(f"{path} does not exist: expected a results database written by `screener scan`")
    with Store(path, Settings()) as store:
        if store.schema_version() is None:
            raise InputError(f"{path} has no screener results: {empty_hint}")
        store.ensure_schema()
        yield store


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
        attach_run_source(store, run_id)
        yield OpenedRun(store, int(run_id))


def attach_run_source(store: Store, run_id: int) -> dict:
    """Attach the archive the way run ``run_id`` read it (its table, columns and windows come from the run record)
    and return the record."""
    try:
        record = aggregate.run_record(store, run_id)
    except KeyError:
        raise InputError(f"{store.path} has no run {run_id}") from None
    store.settings = Settings(**json.loads(record["config"]))
    store.attach_source(Source.recorded(record["source"], record["source_kind"]))
    return record
