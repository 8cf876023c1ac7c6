"""The engine's forward replayed as CUDA graphs, one per batch shape bucket (``buckets``).

A captured graph launches a whole forward at once instead of kernel by kernel from Python. Each bucket has static
input buffers (ids [rows, width], last [rows]) that a batch is copied into: the rows past the batch's own keep
whatever an earlier batch left there, which is harmless because rows never interact and every value there is a
valid token id and position; so are the columns past a row's last token, which a causal forward never reads into
the real positions. The first batch of a bucket runs eagerly on a side stream with the static buffers (its result
is the batch's result, and it creates the kernels, plans and cached tables that capture must not create), then
the bucket's graph is captured; every later batch of the bucket is a replay. All graphs share one memory pool:
they replay one at a time on one stream and each replay's output is copied out before the next one starts.

A capture that fails turns graphs off for the engine's lifetime (``disabled`` says why) and the batch runs
eagerly, as do batches that fit no bucket and buckets past ``max_graphs``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from screener.classifiers.gpu.buckets import Buckets

log = logging.getLogger(__name__)


@dataclass
class _Bucket:
    ids: object
    last: object
    graph: object = None
    out: object = None
    keep: tuple = field(default_factory=tuple)


class BatchGraphs:
    """``run`` is ``forward(ids, last, shared)`` on CUDA graphs, or None where the caller must run it eagerly.

    ``forward`` maps device ids [rows, width] and last [rows] (int64) to a [rows, labels] tensor, row by row
    independently, and must not allocate tensors it keeps beyond the call (``keep`` returns what a captured graph
    reads besides its inputs and weights, so that those stay alive).
    """

    def __init__(self, forward: Callable, device, buckets: Buckets, keep: Callable[[], tuple] = tuple,
                 max_graphs: int = 512):
        import torch

        self.forward, self.device, self.buckets, self.keep, self.max_graphs = forward, device, buckets, keep, max_graphs
        self.stream = torch.cuda.Stream(device=device)
        self.pool = torch.cuda.graph_pool_handle()
        self._buckets: dict[tuple[int, int, int], _Bucket] = {}
        self.disabled: str | None = None
        self.replays = self.eager = 0

    @property
    def captured(self) -> int:
        return sum(b.graph is not None for b in self._buckets.values())

    def stats(self) -> dict:
        return {"graphs": self.captured, "replays": self.replays, "eager_batches": self.eager,
                "disabled": self.disabled}

    def run(self, ids, last, shared: int):
        """Probabilities [rows, labels] of a batch (ids and last on the host, pinned, or on the device), or None."""
        if self.disabled is not None:
            return None
        rows, width = ids.shape
        shape = self.buckets.shape(rows, width)
        if shape is None:
            return None
        key = (*shape, shared)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_graphs:
                return None
            import torch

            bucket = self._buckets[key] = _Bucket(torch.zeros(shape, dtype=torch.long, device=self.device),
                                                  torch.zeros(shape[0], dtype=torch.long, device=self.device))
        bucket.ids[:rows, :width].copy_(ids, non_blocking=True)
        bucket.last[:rows].copy_(last, non_blocking=True)
        if bucket.graph is not None:
            bucket.graph.replay()
            self.replays += 1
            return bucket.out[:rows].clone()
        out = self._warm_up(bucket, shared)
        self._capture(bucket, shared)
        return out[:rows]

    def _warm_up(self, bucket: _Bucket, shared: int):
        import torch

        here = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(here)
        with torch.cuda.stream(self.stream):
            out = self.forward(bucket.ids, bucket.last, shared)
        here.wait_stream(self.stream)
        out.record_stream(here)
        self.eager += 1
        return out

    def _capture(self, bucket: _Bucket, shared: int) -> None:
        import torch

        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the producer thread pins host memory while the forward is being captured.
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
                out = self.forward(bucket.ids, bucket.last, shared)
        except RuntimeError as exc:
            self.disabled = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed (%s); the engine runs eagerly from here", self.disabled)
            torch.cuda.synchronize(self.device)
            self._buckets.clear()
            return
        bucket.graph, bucket.out, bucket.keep = graph, out, self.keep()

    def release(self) -> None:
        """Drops every graph and buffer (their memory returns to the allocator)."""
        import torch

        torch.cuda.synchronize(self.device)
        self._buckets.clear()
