"""The nightly scan: stream unscored messages, score them in length-sorted batches, commit in bounded
transactions, then aggregate and flag. A run killed at any moment resumes where it stopped: a window's scores are
committed together or not at all, and the next run reads only messages without a score for the model."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa

from screener import aggregate, queries
from screener.classifiers.base import Classifier
from screener.errors import InputError, ModelError, StorageError
from screener.progress import Progress
from screener.settings import Settings
from screener.store import Source, Store, conversion_error, is_parquet_source, json_dumps

log = logging.getLogger(__name__)


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


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def resolve_source(db: str | Path, source: str | None, settings: Settings) -> Source:
    if source is None or Path(source) == Path(db):
        return Source(settings.table, parquet=False)
    if is_parquet_source(source):
        return Source(source, parquet=True)
    raise InputError(
        f"cannot read messages from {source!r}: expected Parquet files (a .parquet path or a glob), or the "
        "DuckDB file itself as the only argument"
    )


def _score_window(clf: Classifier, texts: list[str], batch_size: int) -> np.ndarray:
    """Score texts sorted by length, so each batch pads little, and return P(negative) in the input order."""
    if getattr(clf, "sizes_own_batches", False):
        return np.asarray(clf.predict_negative(texts), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty(len(texts), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        out[idx] = clf.predict_negative([texts[i] for i in idx])
    return out


def scan(
    db: str | Path,
    settings: Settings,
    source: str | None = None,
    as_of: datetime | None = None,
    classifier: Classifier | None = None,
    rescore: bool = False,
    progress: bool = True,
) -> ScanResult:
    started = time.monotonic()
    as_of = utc(as_of or datetime.now(timezone.utc))
    src = resolve_source(db, source, settings)
    with Store(db, settings) as store:
        store.ensure_schema()
        store.run("runs_mark_interrupted")
        store.attach_source(src)
        if classifier is None:
            from screener.classifiers.registry import load_classifier

            classifier = load_classifier(settings.model, device=settings.device)
        run_id = begin_run(store, settings, src, classifier.name, classifier.model_id, as_of, rescore)
        with run_guard(store, run_id, db, settings):
            scored = _score_pending(store, classifier, run_id, settings, progress)
            result = complete_run(store, settings, run_id, classifier.name, classifier.model_id, as_of, scored,
                                  started, rescore)
    return result


def begin_run(store: Store, settings: Settings, src: Source, model_name: str, model_id: str, as_of: datetime,
              rescore: bool) -> int:
    """Check the model against earlier scores, apply --rescore, and open the run record; returns the run id."""
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
    return run_id


@contextmanager
def run_guard(store: Store, run_id: int, db: str | Path, settings: Settings) -> Iterator[None]:
    """Record a failure in the run record and turn DuckDB errors into the documented screener errors."""
    try:
        yield
    except duckdb.Error as exc:
        _fail(store, run_id, exc)
        raise conversion_error(exc, settings) or StorageError(
            f"the scan failed on {db}: {str(exc).splitlines()[0]}. Earlier results are intact; "
            "scores committed before the failure are kept and the next run resumes after them."
        ) from exc
    except BaseException as exc:
        _fail(store, run_id, exc)
        raise


def complete_run(store: Store, settings: Settings, run_id: int, model_name: str, model_id: str, as_of: datetime,
                 scored: int, started: float, rescore: bool) -> ScanResult:
    """Aggregate the windows, store the flags and close the run record, once every score is committed."""
    quality = store.source_quality(as_of)
    aggregate.compute_user_stats(store, settings, model_id, as_of)
    skipped = {k: v for k, v in quality.items() if k != "total" and v}
    skipped.update({reason: int(n) for reason, n in store.run("skipped_count", {"model_id": model_id}).fetchall()})
    store.con.begin()
    users_seen, users_flagged = aggregate.store_flags(store, run_id)
    result = ScanResult(
        run_id=run_id, model_name=model_name, model_id=model_id, as_of=as_of.isoformat(),
        messages_total=quality["total"], messages_scored=scored,
        messages_skipped=sum(skipped.values()), skipped_by_reason=skipped,
        users=users_seen, users_flagged=users_flagged,
        seconds=round(time.monotonic() - started, 3), rescored=rescore,
    )
    _finish(store, result, "completed", None)
    store.con.commit()
    return result


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


def _score_pending(store: Store, clf: Classifier, run_id: int, settings: Settings, progress: bool) -> int:
    """Score every pending message, one window at a time, three stages overlapped: while the classifier scores
    window k, a thread reads window k+1 and another commits window k-1, so a GPU never waits for DuckDB. Commits
    stay in window order, one at a time, each window all or nothing."""
    total = int(store.scalar("pending_count", {"model_id": clf.model_id}))
    bar = Progress(total, bar=progress)
    reader_con = store.reader_cursor()
    # A classifier that batches by itself on a GPU needs large calls to keep the GPU busy (5.9k msg/s in calls of
    # 4,096 messages against 21.5k in calls of 50k for SmolLM2 on an H200; engine_variants_smollm2_h200.json).
    window = max(settings.window_rows, int(getattr(clf, "min_window_rows", 0)))
    scored = 0
    try:
        reader = reader_con.sql(
            queries.load("pending_messages"), params={"model_id": clf.model_id}
        ).to_arrow_reader(window)
        windows = _windows(reader, window)
        with ThreadPoolExecutor(max_workers=1) as read_pool, ThreadPoolExecutor(max_workers=1) as write_pool:
            next_batch = read_pool.submit(next, windows, None)
            committing = None
            try:
                while (batch := next_batch.result()) is not None:
                    next_batch = read_pool.submit(next, windows, None)
                    tables = _score_batch(clf, run_id, batch, settings)
                    if committing is not None:
                        scored += _committed(committing, bar)
                    committing = write_pool.submit(_commit, store, tables)
                if committing is not None:
                    scored += _committed(committing, bar)
                    committing = None
            finally:
                # On a failure, the window being committed still lands (or rolls back) before the error goes up.
                if committing is not None:
                    committing.exception()
                next_batch.cancel()
                if not next_batch.cancelled():
                    next_batch.exception()
    finally:
        bar.close()
        reader_con.close()
    return scored


def _windows(reader: pa.RecordBatchReader, rows: int) -> Iterator[pa.Table]:
    """The reader's rows in windows of exactly ``rows`` (the last one shorter): DuckDB's batch size is only an
    upper bound, and its parallel scan hands over partial batches, which would give a GPU small calls."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in reader:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def _committed(committing: Future, bar: Progress) -> int:
    scored, rows = committing.result()
    bar.advance(rows)
    log.debug("committed a window of %d messages (%d scored)", rows, scored)
    return scored


def _score_batch(clf: Classifier, run_id: int, batch: pa.Table, settings: Settings) -> tuple[pa.Table, pa.Table]:
    """The scores and skipped rows of one window, as tables ready to insert."""
    ids = batch.column("message_id").to_pylist()
    texts = batch.column("text").to_pylist()
    keep = [i for i, t in enumerate(texts) if t is not None and t.strip()]
    blank = [i for i, t in enumerate(texts) if t is None or not t.strip()]
    probs = _score_window(clf, [texts[i] for i in keep], settings.batch_size) if keep else np.empty(0, np.float32)
    now = datetime.now(timezone.utc)
    scores = pa.table({
        "message_id": pa.array([ids[i] for i in keep], pa.string()),
        "model_id": pa.array([clf.model_id] * len(keep), pa.string()),
        "p_negative": pa.array(probs, pa.float32()),
        "label": pa.array(np.where(probs >= settings.negative_threshold, "negative", "positive").tolist(),
                          pa.string()),
        "scored_at": pa.array([now] * len(keep), pa.timestamp("us", tz="UTC")),
        "run_id": pa.array([run_id] * len(keep), pa.int64()),
    })
    skipped = pa.table({
        "message_id": pa.array([ids[i] for i in blank], pa.string()),
        "model_id": pa.array([clf.model_id] * len(blank), pa.string()),
        "reason": pa.array(["empty_text"] * len(blank), pa.string()),
        "run_id": pa.array([run_id] * len(blank), pa.int64()),
    })
    return scores, skipped


def _commit(store: Store, tables: tuple[pa.Table, pa.Table]) -> tuple[int, int]:
    """One window's scores and skipped rows in one transaction; returns (scored, rows of the window)."""
    scores, skipped = tables
    con = store.con
    con.begin()
    try:
        con.register("screener_batch_scores", scores)
        con.register("screener_batch_skipped", skipped)
        store.run("scores_insert")
        store.run("skipped_insert")
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        con.unregister("screener_batch_scores")
        con.unregister("screener_batch_skipped")
    return scores.num_rows, scores.num_rows + skipped.num_rows


def _finish(store: Store, r: ScanResult, status: str, error: str | None) -> None:
    store.run("run_finish", {
        "run_id": r.run_id, "finished_at": datetime.now(timezone.utc), "status": status,
        "messages_total": r.messages_total, "messages_scored": r.messages_scored,
        "messages_skipped": r.messages_skipped, "skipped_by_reason": json_dumps(r.skipped_by_reason),
        "users_seen": r.users, "users_flagged": r.users_flagged, "seconds": r.seconds, "error": error,
    })


def _fail(store: Store, run_id: int, exc: BaseException) -> None:
    """Best effort: record the failure; if even that fails (disk full), the run stays 'running' and the next
    scan marks it interrupted."""
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
