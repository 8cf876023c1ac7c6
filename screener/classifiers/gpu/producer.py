"""The producer process: ``pack_chunk`` in a process of its own, so that tokenizing never holds the GIL of the
process launching GPU work (the tokenizer's batch call holds it for long stretches)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import queue
import threading
from typing import Sequence

from screener.classifiers.gpu.packing import pack_chunk
from screener.classifiers.gpu.prompt_tokens import PromptTokenizer
from screener.errors import ModelError


def producer_main(prompts: PromptTokenizer, prefix_ids: list[int], conn) -> None:
    """The producer process: answers (tag, texts, options) requests with (tag, batches) or (tag, error text).

    A thread reads requests as they come: the engine sends the next request while this process sends a reply,
    and with both blocked on a full pipe neither would ever read.
    """
    requests: queue.Queue = queue.Queue()

    def read() -> None:
        while True:
            try:
                request = conn.recv()
            except EOFError:  # the engine's process is gone
                request = None
            requests.put(request)
            if request is None:
                return

    threading.Thread(target=read, daemon=True).start()
    while (request := requests.get()) is not None:
        tag, texts, options = request
        try:
            conn.send((tag, pack_chunk(prompts, prefix_ids, texts, **options), None))
        except BaseException as exc:  # reported to the engine, which raises it in the caller's thread
            conn.send((tag, None, f"{type(exc).__name__}: {exc}"))


class ProducerProcess:
    """Packs chunks of texts in a spawned process, two requests in flight.

    Requests are tagged: replies to a call that was abandoned part way (an exception in the consumer) are
    recognised by their old tag and dropped by the next call.
    """

    def __init__(self, prompts: PromptTokenizer, prefix_ids: Sequence[int]):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # fork would copy CUDA state and the tokenizer's threads
        self._conn, child = context.Pipe()
        self._process = context.Process(target=producer_main, args=(prompts, list(prefix_ids), child), daemon=True,
                                        name="screener-packer")
        self._process.start()
        child.close()
        self._calls = itertools.count()

    def map(self, chunks, options: dict):
        """``pack_chunk`` of each chunk in order, the next chunk's request sent before this one's reply is read."""
        tag = next(self._calls)
        in_flight: collections.deque = collections.deque()
        for i, chunk in enumerate(chunks):
            self._conn.send(((tag, i), chunk, options))
            in_flight.append((tag, i))
            if len(in_flight) == 2:
                yield self._receive(in_flight.popleft())
        while in_flight:
            yield self._receive(in_flight.popleft())

    def _receive(self, want):
        while True:
            try:
                got, batches, error = self._conn.recv()
            except EOFError:
                raise ModelError("the engine's tokenizer process exited unexpectedly") from None
            if got == want:
                if error is not None:
                    raise ModelError(f"tokenizing a batch failed: {error}")
                return batches

    def close(self) -> None:
        """Stops the process; safe to call twice."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._process.join(timeout=10)
        self._conn.close()
