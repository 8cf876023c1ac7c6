"""``screener scan --engine ray``: the same scan, with the scoring spread over a Ray cluster's GPUs (or CPUs).

The results database stays where the local engine keeps it; only the scoring moves:

1. The driver exports the messages without a score for the model (the local engine's ``pending_messages`` query)
   to Parquet files under the work folder, which may be an ``s3://`` or ``gs://`` URI that every node reads.
2. Ray Data reads them, and ``map_batches`` sends blocks to an actor pool of classifier workers, each loading the
   model once (one GPU per actor where the cluster has GPUs). A worker scores its block in token-budgeted batches
   and writes the block's scores to one Parquet file named by a hash of the block's message ids: a block retried
   after a worker died overwrites its own file instead of adding a second one.
3. The driver loads the files into ``screener_scores`` in one transaction, skipping any message that already has
   a score for the model, then aggregates, flags and closes the run record as the local engine does
   (:mod:`screener.runs`).

Score files of a run whose driver died before step 3 are loaded by the next run, so finished blocks are not
scored twice; the work folder of a completed run is removed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.fs as pafs

from screener import batching, objstore, runs
from screener.classifiers.base import Classifier
from screener.classifiers.gpu.fast_paths import FastPaths
from screener.errors import ConfigError, ModelError, ScreenerError
from screener.settings import Settings
from screener.store import Store

log = logging.getLogger(__name__)

SCORES_VIEW = "screener_ray_scores"

Loader = Callable[[str, str], Classifier]


@dataclass(frozen=True)
class RayOptions:
    # None: RAY_ADDRESS, else the Ray instance this process already joined, else a new local one.
    address: str | None = None
    # Classifier actors; None: one per GPU of the cluster, or one per `cpus_per_worker` CPUs where it has none.
    workers: int | None = None
    # Pending messages and scores go here (local folder or s3:// / gs:// URI); None: '<results db>.ray/' beside
    # the database, which suits a one-machine cluster only.
    work_dir: str | None = None
    # Padded tokens per model call (a batch of long messages holds fewer rows than one of short messages);
    # None: the classifier's own budget.
    token_budget: int | None = None
    # Messages per pending file, which is one Ray task: the unit a dead worker's retry repeats.
    rows_per_task: int = 2048
    cpus_per_worker: int = 1

    def __post_init__(self) -> None:
        for name, value in (("token_budget", self.token_budget), ("rows_per_task", self.rows_per_task),
                            ("cpus_per_worker", self.cpus_per_worker), ("workers", self.workers)):
            if value is not None and value < 1:
                raise ConfigError(f"ray option {name} must be at least 1, got {value}")


def _default_loader(name_or_path: str, device: str, fast_paths: FastPaths = FastPaths()) -> Classifier:
    from screener.classifiers.registry import load_classifier

    return load_classifier(name_or_path, device=device, fast_paths=fast_paths)


def block_key(message_ids: list[str]) -> str:
    """A name for a block's score file that depends only on which messages it holds."""
    digest = hashlib.sha256()
    for mid in sorted(message_ids):
        digest.update(mid.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]


class ScoreWorker:
    """A Ray Data actor: loads the classifier once, then scores blocks and writes each block's scores file."""

    def __init__(self, model: str, device: str, model_id: str, run_id: int, threshold: float,
                 token_budget: int | None, max_rows: int, scores_dir: str, threads: int | None,
                 loader: Loader | None = None) -> None:
        self.clf = None
        clf = (loader or _default_loader)(model, device)
        if clf.model_id != model_id:
            clf.close()
            raise ModelError(f"model {model!r} has id {clf.model_id} on this worker but {model_id} on the "
                             "driver: every node must hold the same model files")
        self.clf = clf
        torch = sys.modules.get("torch")
        if threads and torch is not None:
            # Several actors share a machine's cores; each gets its own share instead of all of them.
            torch.set_num_threads(threads)
        self.model_id, self.run_id, self.threshold = model_id, run_id, threshold
        self.token_budget, self.max_rows = token_budget, max_rows
        self.fs, self.scores_dir = objstore.resolve(scores_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        (pending,) = batch.column("path").to_pylist()
        block = objstore.read_parquet(self.fs, pending)
        ids = block.column("message_id").to_pylist()
        texts = block.column("text").to_pylist()
        proba = batching.predict_proba(self.clf, texts, self.max_rows, self.token_budget)
        scores = runs.scores_table(ids, self.model_id, self.run_id, proba, self.clf.labels, self.threshold)
        path = f"{self.scores_dir.rstrip('/')}/{block_key(ids)}.parquet"
        objstore.write_parquet(scores, self.fs, path)
        return pa.table({"file": [path], "rows": [len(ids)]})

    def close(self) -> None:
        if self.clf is not None:
            self.clf.close()
            self.clf = None

    def __del__(self) -> None:
        # Ray Data drops an actor's instance when the pool shuts down gracefully: the model is released then.
        self.close()


def _identify(loader: Loader | None, model: str, device: str) -> tuple[str, str, FastPaths]:
    with closing((loader or _default_loader)(model, device)) as clf:
        return clf.name, clf.model_id, getattr(clf, "fast_paths", None) or FastPaths()


def scan_ray(
    db: str | Path,
    settings: Settings,
    source: str | None = None,
    as_of: datetime | None = None,
    rescore: bool = False,
    progress: bool = True,
    options: RayOptions = RayOptions(),
    loader: Loader | None = None,
) -> runs.ScanResult:
    """Like :func:`screener.scan.scan`, with the scoring done by Ray. ``loader(model, device)`` builds the
    classifier on each worker (default: the model registry, with the settings' GPU fast paths)."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError("--engine ray needs Ray: install the extra with `pip install 'screener[ray]'`, or use "
                          "--engine local") from exc

    started = time.monotonic()
    loader = loader or functools.partial(_default_loader, fast_paths=FastPaths.of(settings))
    as_of = runs.utc(as_of or datetime.now(timezone.utc))
    src = runs.resolve_source(db, source, settings)
    runs.check_new_source(db, src, settings)
    work_dir = options.work_dir or str(Path(db).expanduser().resolve()) + ".ray"
    fs, work = objstore.resolve(work_dir)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=options.address, include_dashboard=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        gpus = 0 if settings.device == "cpu" else int(ray.cluster_resources().get("GPU", 0))
        if settings.device.startswith("cuda") and not gpus:
            raise ModelError(f"device {settings.device!r} was asked for but the Ray cluster has no GPUs; "
                             "use --device cpu or auto")
        device = "cuda" if gpus else "cpu"
        actor_resources = {"num_gpus": 1} if gpus else {"num_cpus": options.cpus_per_worker}
        with Store(db, settings) as store:
            # The driver needs the model id before any worker starts (it selects the pending messages), and the
            # model files need only be where the workers run, so a task on the cluster reads it.
            try:
                model_name, model_id, ran = ray.get(
                    ray.remote(_identify).options(**actor_resources).remote(loader, settings.model, device))
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, ScreenerError):
                    raise exc.cause from None
                raise
            model_dir = f"{work.rstrip('/')}/model={model_id}"
            runs.prepare(store, src)
            if rescore:
                _remove(fs, model_dir)
            # The run records the GPU engine's fast paths that ran, as the local engine does.
            recorded = dataclasses.replace(settings, **ran.settings())
            run = runs.begin(store, recorded, src, model_name, model_id, as_of, rescore, started)
            run_id = run.run_id
            run_dir = f"{model_dir}/run={run_id}"
            with runs.guard(store, run):
                leftovers = _leftover_score_files(fs, model_dir)
                pending, skipped_ids = _export_pending(store, fs, f"{run_dir}/pending", model_id,
                                                       options.rows_per_task, _ids_in(fs, leftovers))
                # The export read the whole archive, and the load below writes every score: DuckDB keeps the
                # blocks of both cached unless let go (Store.release_cached_blocks), as the local engine does.
                store.release_cached_blocks()
                written = []
                if pending:
                    workers = worker_count(options, gpus, int(ray.cluster_resources().get("CPU", 0)))
                    log.info("run %d: %d files of pending messages, %d score files left by earlier runs; "
                             "scoring on %d %s actors", run_id, len(pending), len(leftovers), workers, device)
                    written = _score_on_ray(
                        fs, pending, objstore.join(work_dir, f"model={model_id}", f"run={run_id}", "scores"),
                        {"model": settings.model, "device": device, "model_id": model_id, "run_id": run_id,
                         "threshold": settings.negative_threshold, "token_budget": options.token_budget,
                         "max_rows": settings.batch_size,
                         "threads": options.cpus_per_worker if device == "cpu" else None, "loader": loader},
                        workers, actor_resources)
                scored = _load_scores(store, fs, model_id, run_id, leftovers + written, skipped_ids)
                store.release_cached_blocks()
                result = runs.complete(store, run, scored)
            # Only now are the files' scores committed; earlier, a crash keeps them for the next run to load.
            _remove(fs, model_dir)
    finally:
        if started_ray:
            ray.shutdown()
    return result


def _remove(fs, path: str) -> None:
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def _leftover_score_files(fs, model_dir: str) -> list[str]:
    """Score files that earlier runs' workers finished but whose driver stopped before loading them."""
    if fs.get_file_info(model_dir).type != pafs.FileType.Directory:
        return []
    return sorted(info.path for info in fs.get_file_info(pafs.FileSelector(model_dir, recursive=True))
                  if info.type == pafs.FileType.File and info.path.rsplit("/", 2)[-2] == "scores"
                  and info.base_name.endswith(".parquet") and not info.base_name.startswith("."))


def _ids_in(fs, files: list[str]) -> set[str]:
    ids: set[str] = set()
    for path in files:
        ids.update(objstore.read_parquet(fs, path).column("message_id").to_pylist())
    return ids


def _export_pending(store: Store, fs, pending_dir: str, model_id: str, rows_per_file: int,
                    done: set[str]) -> tuple[list[str], list[str]]:
    """Write the messages to score as Parquet files of at most ``rows_per_file`` rows, one Ray task each, leaving
    out those in ``done``; return the files and the ids of blank messages, which are recorded as skipped, as the
    local engine does."""
    reader = store.pending_messages(model_id, rows_per_file)
    files: list[str] = []
    skipped: list[str] = []
    for batch in reader:
        ids = batch.column("message_id").to_pylist()
        texts = batch.column("text").to_pylist()
        blank = [runs.is_blank(t) for t in texts]
        skipped.extend(mid for mid, b in zip(ids, blank) if b)
        keep = [i for i, mid in enumerate(ids) if not blank[i] and mid not in done]
        if not keep:
            continue
        rows = pa.table({"message_id": pa.array([ids[i] for i in keep], pa.string()),
                         "text": pa.array([texts[i] for i in keep], pa.string())})
        path = f"{pending_dir}/part-{len(files):06d}.parquet"
        objstore.write_parquet(rows, fs, path)
        files.append(path)
    return files, skipped


def worker_count(options: RayOptions, gpus: int, cpus: int) -> int:
    if gpus:
        return options.workers or gpus
    if options.workers:
        return options.workers
    return max(1, cpus // options.cpus_per_worker)


def _score_on_ray(fs, pending: list[str], scores_uri: str, worker_kwargs: dict, workers: int,
                  actor_resources: dict) -> list[str]:
    import ray.data

    # One row and one block per pending file: each file is one actor task, so the actors share the files, and a
    # task that a dead worker left is retried as a whole. (Ray Data's read_parquet would pack small files into
    # blocks of at least target_min_block_size, so that one actor would score them all, and its listing tasks
    # need a CPU that CPU actors may all hold.)
    files = ray.data.from_items([{"path": path} for path in pending], override_num_blocks=len(pending))
    summaries = files.map_batches(
        ScoreWorker,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={**worker_kwargs, "scores_dir": scores_uri},
        **actor_resources,
    ).take_all()
    return sorted({s["file"] for s in summaries})


def _load_scores(store: Store, fs, model_id: str, run_id: int, files: list[str], skipped_ids: list[str]) -> int:
    """One transaction: every score file and the skipped messages, or nothing. Messages that already have a score
    for the model are left as they are, so a file loaded twice adds nothing."""
    skipped = runs.skipped_table(skipped_ids, model_id, run_id)
    con = store.con
    inserted = 0
    con.begin()
    try:
        for path in files:
            con.register(SCORES_VIEW, objstore.read_parquet(fs, path))
            try:
                inserted += int(store.run("ray_scores_insert", {"model_id": model_id}).fetchone()[0])
            finally:
                con.unregister(SCORES_VIEW)
        con.register(runs.SKIPPED_VIEW, skipped)
        try:
            store.run("skipped_insert")
        finally:
            con.unregister(runs.SKIPPED_VIEW)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return inserted
