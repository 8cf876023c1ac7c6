"""SIGINT and SIGTERM while a command runs: the first one stops it, so that a scan drops the window it was
scoring, lets the window being committed land or roll back, and records its run as ``interrupted``; the command
then fails with :class:`~screener.errors.Interrupted` (exit code 130 or 143). Signals that arrive while it is
stopping are logged and otherwise ignored, so the cleanup itself is not cut short."""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from screener.errors import Interrupted

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The signal being handled, while stop_on_signals is active: DuckDB turns an exception raised by a handler during a
# query into an error of its own, so the guard of a run asks here whether that error was a signal.
_received: list[int] = []


class SignalReceived(BaseException):
    """What the handler raises. Like KeyboardInterrupt it is no ``Exception``, so that no ``except Exception`` on
    the way (a logging handler's, a library's) swallows it; :func:`stopping` turns it into ``Interrupted``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum: int, frame) -> None:
    if _received:
        log.warning("%s received while stopping: finishing the cleanup first", signal.Signals(signum).name)
        return
    _received.append(signum)
    raise SignalReceived(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Handle SIGINT and SIGTERM as described above for the duration; signals the process ignores (a background
    job's SIGINT) stay ignored. Outside the main thread, where Python cannot handle signals, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _handler)
    _received.clear()
    try:
        yield
    except SignalReceived as exc:
        raise Interrupted(exc.signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()


def stopping(exc: BaseException) -> Interrupted | None:
    """The interruption ``exc`` is or stands for: a signal's, a Ctrl-C (``KeyboardInterrupt``, where no handler of
    ours is active), or any error raised while a signal is being handled; None for an ordinary error."""
    if isinstance(exc, Interrupted):
        return exc
    if isinstance(exc, SignalReceived):
        return Interrupted(exc.signum)
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(signal.SIGINT)
    if _received:
        return Interrupted(_received[0])
    return None


def check() -> None:
    """Stop now if a signal arrived: for the rare code that catches even BaseException and so swallowed the one
    the handler raised. Loops call it between units of work."""
    if _received:
        raise Interrupted(_received[0])
