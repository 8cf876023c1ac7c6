"""The local scan: stream unscored messages, score them in token-budget batches, commit in bounded transactions,
then aggregate and flag. A run killed at any moment resumes where it stopped: a window's scores are committed
together or not at all, and the next run reads only messages without a score for the model."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa

from screener import batching, interrupts, runs
from screener.classifiers.base import Classifier
from screener.classifiers.gpu.fast_paths import FastPaths
from screener.progress import Progress
from screener.settings import Settings
from screener.store import Store

log = logging.getLogger(__name__)


def scan(
    db: str | Path,
    settings: Settings,
    source: str | None = None,
    as_of: datetime | None = None,
    classifier: Classifier | None = None,
    rescore: bool = False,
    progress: bool = True,
) -> runs.ScanResult:
    """Score the messages of ``source`` (default: the messages table of ``db``) that have no score for the model
    yet, then aggregate, flag and record the run in ``db``. A ``classifier`` passed in stays open: it is the
    caller's to close; one loaded from ``settings.model`` is closed here."""
    started = time.monotonic()
    as_of = runs.utc(as_of or datetime.now(timezone.utc))
    src = runs.resolve_source(db, source, settings)
    runs.check_new_source(db, src, settings)
    with Store(db, settings) as store:
        runs.prepare(store, src)
        with ExitStack() as model:
            clf = model.enter_context(_classifier(classifier, settings))
            # The run records the backend that scored (auto resolved), beside the model id both backends share,
            # and the GPU engine's fast paths that ran (none where they were ignored).
            ran = getattr(clf, "fast_paths", None) or FastPaths()
            recorded = dataclasses.replace(settings, backend=getattr(clf, "backend", settings.backend),
                                           **ran.settings())
            run = runs.begin(store, recorded, src, clf.name, clf.model_id, as_of, rescore, started)
            with runs.guard(store, run):
                scored = _score_pending(store, clf, run.run_id, settings, progress)
                # The model's memory goes back before the windows and flags are aggregated, so the scan's peak
                # is the larger of the two phases, not their sum.
                model.close()
                _release_freed_memory()
                return runs.complete(store, run, scored)


def _release_freed_memory() -> None:
    """Hand the closed model's freed heap back to the system (glibc keeps it for reuse otherwise, and DuckDB, which
    aggregates next, allocates elsewhere): of the 390 MB the ONNX default takes, 260 go back when it is closed and 70
    more with this. A no-op without glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def _classifier(given: Classifier | None, settings: Settings) -> Iterator[Classifier]:
    if given is not None:
        yield given
        return
    from screener.classifiers.registry import load_classifier

    clf = load_classifier(settings.model, device=settings.device, backend=settings.backend,
                          threads=settings.model_threads, fast_paths=FastPaths.of(settings))
    try:
        yield clf
    finally:
        clf.close()


def _score_pending(store: Store, clf: Classifier, run_id: int, settings: Settings, progress: bool) -> int:
    """Score every pending message, one window at a time, three stages overlapped: while the classifier scores
    window k, a thread reads and tokenizes window k+1 and another commits window k-1, so a GPU never waits for
    DuckDB and a CPU model never waits for its tokenizer. Commits stay in window order, one at a time, each window
    all or nothing."""
    # A classifier that batches by itself on a GPU keeps the GPU busy only with calls of many messages.
    window = max(settings.window_rows, clf.min_window_rows)
    scored = 0
    reader_con = store.reader_cursor()
    bar = None
    try:
        # The candidates view hashes every id of the archive: once for the count and the stream.
        store.prepare_candidates(reader_con)
        bar = Progress(store.pending_count(clf.model_id, con=reader_con, prepared=True), bar=progress)
        # Counting read the whole archive, whose blocks DuckDB now keeps cached.
        store.release_cached_blocks()
        # DuckDB is called from the reading and the committing threads; the lock keeps a read from meeting the
        # moment the committing thread lowers the memory limit (Store.release_cached_blocks).
        duckdb_calls = threading.Lock()
        reader = _locked(store.pending_messages(clf.model_id, window, con=reader_con, prepared=True), duckdb_calls)
        windows = (_prepared(clf, w) for w in whole_windows(reader, window))
        with ThreadPoolExecutor(max_workers=1) as read_pool, ThreadPoolExecutor(max_workers=1) as write_pool:
            next_batch = read_pool.submit(next, windows, None)
            committing = None
            try:
                while (batch := next_batch.result()) is not None:
                    interrupts.check()
                    next_batch = read_pool.submit(next, windows, None)
                    tables = _score_window(clf, run_id, batch, settings)
                    if committing is not None:
                        scored += _committed(committing, bar)
                    committing = write_pool.submit(_commit, store, tables, duckdb_calls)
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
        if bar is not None:
            bar.close()
        reader_con.close()
    return scored


def whole_windows(reader: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
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


@dataclasses.dataclass(frozen=True)
class Window:
    """A window as read: its message ids and texts, which of them are not blank, and their token lengths (None
    for a classifier that sizes its own batches, unless it tokenizes ahead)."""

    ids: list
    texts: list
    keep: list[int]
    lengths: list[int] | None


def _prepared(clf: Classifier, window: pa.Table) -> Window:
    ids = window.column("message_id").to_pylist()
    texts = window.column("text").to_pylist()
    keep = [i for i, t in enumerate(texts) if not runs.is_blank(t)]
    wanted = clf.tokenizes_ahead or not clf.sizes_own_batches
    lengths = clf.token_lengths([texts[i] for i in keep]) if wanted else None
    return Window(ids, texts, keep, lengths)


def _score_window(clf: Classifier, run_id: int, window: Window, settings: Settings) -> tuple[pa.Table, pa.Table]:
    """The scores and skipped rows of one window, as tables ready to insert."""
    ids, keep = window.ids, window.keep
    proba = batching.predict_proba(clf, [window.texts[i] for i in keep], settings.batch_size,
                                   lengths=window.lengths)
    scores = runs.scores_table([ids[i] for i in keep], clf.model_id, run_id, proba, clf.labels,
                               settings.negative_threshold)
    kept = set(keep)
    skipped = runs.skipped_table([m for i, m in enumerate(ids) if i not in kept], clf.model_id, run_id)
    return scores, skipped


def _locked(reader: Iterable[pa.RecordBatch], lock: threading.Lock) -> Iterator[pa.RecordBatch]:
    batches = iter(reader)
    while True:
        with lock:
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def _commit(store: Store, tables: tuple[pa.Table, pa.Table], duckdb_calls: threading.Lock) -> tuple[int, int]:
    """Commit one window, then let DuckDB drop the table blocks it caches, so the scan's memory does not grow with
    the scores it writes; returns (scored, rows of the window)."""
    scores, skipped = tables
    runs.commit_window(store, scores, skipped)
    with duckdb_calls:
        store.release_cached_blocks()
    return scores.num_rows, scores.num_rows + skipped.num_rows
