"""SIGTERM as an exception, for the span of a scan that must report how it ended (a scheduler's timeout kills with
SIGTERM; without this the process would end before it could write its summary or notify anyone)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

# The exit code of a process ended by SIGTERM, as shells report it.
EXIT_CODE = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it."""


def _raise(signum, frame) -> None:
    raise Terminated(f"terminated by signal {signum} (SIGTERM)")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` in the main thread; the earlier handler comes back
    after. Off the main thread (where Python cannot set handlers) it leaves SIGTERM alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
