"""The producer process: ``pack_chunk`` in a process of its own, so that tokenizing never holds the GIL of the
process launching GPU work (the tokenizer's batch call holds it for long stretches)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import queue
import threading
from typing import Sequence

from screener.classifiers.gpu import child
from screener.classifiers.gpu.packing import pack_chunk
from screener.classifiers.gpu.prompt_tokens import PromptTokenizer
from screener.errors import ModelError

READY = "ready"
NAME = "the engine's tokenizer process"


def producer_main(prompts: PromptTokenizer, prefix_ids: list[int], conn) -> None:
    """The producer process: says ``READY``, then answers (tag, texts, options) requests with (tag, batches, None)
    or (tag, None, error text).

    A thread reads requests as they come: the engine sends the next request while this process sends a reply,
    and with both blocked on a full pipe neither would ever read.
    """
    conn.send(READY)
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
    recognised by their old tag and dropped by the next call. The first request waits for the process's
    ``READY`` (at most ``child.START_TIMEOUT`` seconds), so that nothing is sent to a process that never started;
    a process that dies is a ModelError saying how it ended.
    """

    def __init__(self, prompts: PromptTokenizer, prefix_ids: Sequence[int]):
        import multiprocessing

        child.check_main_guard(NAME)
        context = multiprocessing.get_context("spawn")  # fork would copy CUDA state and the tokenizer's threads
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=producer_main, args=(prompts, list(prefix_ids), child_conn),
                                        daemon=True, name="screener-packer")
        self._process.start()
        child_conn.close()
        self._started = False
        self._calls = itertools.count()

    def _start(self) -> None:
        if self._started:
            return
        hello = child.receive(self._conn, self._process, NAME, child.START_TIMEOUT, started=False)
        if hello != READY:
            raise ModelError(f"{NAME} sent {hello!r} where it should have said it was ready")
        self._started = True

    def map(self, chunks, options: dict):
        """``pack_chunk`` of each chunk in order, the next chunk's request sent before this one's reply is read."""
        self._start()
        tag = next(self._calls)
        in_flight: collections.deque = collections.deque()
        for i, chunk in enumerate(chunks):
            child.send(self._conn, self._process, NAME, ((tag, i), chunk, options))
            in_flight.append((tag, i))
            if len(in_flight) == 2:
                yield self._receive(in_flight.popleft())
        while in_flight:
            yield self._receive(in_flight.popleft())

    def _receive(self, want):
        while True:
            got, batches, error = child.receive(self._conn, self._process, NAME)
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
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=child.REAP_TIMEOUT)
        self._conn.close()
