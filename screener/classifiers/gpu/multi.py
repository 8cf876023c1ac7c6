"""Several GPUs of one host: one worker process per GPU, each with its own engine, sharing every call."""

from __future__ import annotations

import contextlib
from multiprocessing.util import Finalize
from typing import Callable, Sequence

import numpy as np

from screener.classifiers.base import ClassifierBase
from screener.classifiers.gpu import child
from screener.errors import ModelError

STARTED = ("started", None)


def worker_name(device: str) -> str:
    return f"the GPU worker for {device}"


def worker_main(build: Callable[[str], object], device: str, conn) -> None:
    """A worker process: says ``STARTED``, builds its classifier on ``device`` and says ready (or why not), then
    answers score and lengths commands."""
    conn.send(STARTED)
    try:
        if device.startswith("cuda"):
            import torch

            # Otherwise every worker also opens a context (and its memory) on GPU 0.
            torch.cuda.set_device(device)
        engine = build(device)
        conn.send(("ready", {"model_id": engine.model_id, "name": engine.name, "labels": tuple(engine.labels),
                             "min_window_rows": int(engine.min_window_rows),
                             "token_budget": int(engine.token_budget),
                             "fast_paths": getattr(engine, "fast_paths", None)}))
    except BaseException as exc:  # reported to the parent, which raises a ModelError
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            command, payload = conn.recv()
        except EOFError:  # the parent is gone
            command = "stop"
        if command == "stop":
            engine.close()
            return
        try:
            result = engine.predict_proba(payload) if command == "score" else engine.token_lengths(payload)
            conn.send(("ok", result))
        except BaseException as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def stop_workers(workers) -> None:
    for process, conn in workers:
        if process.is_alive():
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
    for process, _ in workers:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()


class MultiGPUEngine(ClassifierBase):
    """One worker process per GPU of this host, each with its own engine, sharing every call without overlap.

    Each ``predict_proba`` call is split into disjoint slices, one per worker: texts sorted by length and dealt
    round-robin, so every GPU gets about the same number of tokens. ``build(device)`` must be picklable (a
    module-level function or a functools.partial of one) and return a classifier on that device. Workers start
    with ``spawn`` because CUDA cannot be used in a forked child. ``close()`` stops the workers (they are also
    stopped when this process exits). A worker that cannot start or dies is a ModelError naming its device and how
    it ended, and closes the engine.
    """

    sizes_own_batches = True

    def __init__(self, build: Callable[[str], object], devices: Sequence[str], start_method: str = "spawn"):
        import multiprocessing

        if not devices:
            raise ModelError("MultiGPUEngine needs at least one device")
        if start_method != "fork":
            child.check_main_guard("the GPU workers")
        context = multiprocessing.get_context(start_method)
        self._workers = []
        self._names: list[str] = []
        for device in devices:
            parent, child_conn = context.Pipe()
            # Not daemonic: a worker's engine starts a producer process of its own, which daemonic processes may
            # not. The finaliser below stops the workers when this process exits without close().
            process = context.Process(target=worker_main, args=(build, device, child_conn), daemon=False,
                                      name=f"screener-gpu-worker-{device}")
            process.start()
            child_conn.close()
            self._workers.append((process, parent))
            self._names.append(worker_name(device))
        self._finalizer = Finalize(self, stop_workers, args=(self._workers,), exitpriority=10)
        try:
            hello = self._receive(child.START_TIMEOUT, started=False)
            if any(h != STARTED for h in hello):
                raise ModelError(f"GPU workers sent {hello} where they should have said they started")
            # Loading a model takes as long as it takes; a worker that dies meanwhile ends the wait.
            replies = self._receive(None, started=True)
        except ModelError:
            self._abort()
            raise
        errors = [f"{d}: {r[1]}" for d, r in zip(devices, replies) if r[0] == "error"]
        if errors:
            self.close()
            raise ModelError("a GPU worker could not load the model: " + "; ".join(errors))
        ids = {r[1]["model_id"] for r in replies}
        if len(ids) != 1:
            self.close()
            raise ModelError(f"GPU workers loaded different weights (model ids {sorted(ids)}): expected one model")
        first = replies[0][1]
        self.model_id, self.name, self.labels = first["model_id"], first["name"], first["labels"]
        self.token_budget = first["token_budget"]
        self.fast_paths = first["fast_paths"]
        self.devices = list(devices)
        self.min_window_rows = first["min_window_rows"] * len(self._workers)

    def _receive(self, timeout: float | None, started: bool, count: int | None = None) -> list:
        """One message from each of the first ``count`` workers (all by default), in order."""
        children = [(conn, process, name) for (process, conn), name in zip(self._workers, self._names)]
        return child.receive_all(children[:count], timeout, started)

    def _ask(self, command: str, parts: list[list[str]]) -> list:
        """Send part i to worker i (as many workers as parts) and collect their results in the same order."""
        if not self._workers:
            raise ModelError("this MultiGPUEngine is closed: load the model again")
        try:
            for (process, conn), name, part in zip(self._workers, self._names, parts):
                child.send(conn, process, name, (command, part))
            replies = self._receive(None, started=True, count=len(parts))
        except ModelError:
            self._abort()
            raise
        errors = [r[1] for r in replies if r[0] == "error"]
        if errors:
            raise ModelError("a GPU worker failed: " + "; ".join(errors))
        return [r[1] for r in replies]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        if not self._workers:
            raise ModelError("this MultiGPUEngine is closed: load the model again")
        order = np.argsort(np.array([len(t) for t in texts]), kind="stable")
        slices = [order[i::len(self._workers)] for i in range(len(self._workers))]
        results = self._ask("score", [[texts[i] for i in s] for s in slices])
        for s, probs in zip(slices, results):
            out[s] = probs
        return out

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return self._ask("lengths", [list(texts)])[0]

    def _abort(self) -> None:
        """Stops the workers at once, after one failed: what the others are doing is of no use any more, and
        their replies to this call would be taken for the next call's."""
        for process, _ in self._workers:
            if process.is_alive():
                process.terminate()
        self.close()

    def close(self) -> None:
        """Stops the workers; safe to call twice."""
        self._finalizer()
        self._workers = []
