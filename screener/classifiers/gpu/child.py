"""Child processes of the GPU engine (the tokenizer process, the GPU workers): started only where they can start,
and heard from only while they live, so that a child that cannot start or dies is an error at once, not a hang.

A spawned child imports the main script again before it runs its target. In a script without an
``if __name__ == "__main__":`` guard that import runs the whole script a second time (loading the model again,
for minutes) and ends in multiprocessing's bootstrapping error; ``check_main_guard`` refuses to start a child
there. Every wait on a child's pipe also waits on its sentinel, so that its death ends the wait.
"""

from __future__ import annotations

import ast
import signal
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Sequence

from screener.errors import ModelError

# Seconds from a child's start to its first message: a fresh interpreter importing torch and transformers, on a
# busy host. A child that dies is noticed at once; this bounds one that hangs while starting.
START_TIMEOUT = 120.0
# Seconds to wait for a child whose pipe closed to be reaped, so that its exit code can be reported.
REAP_TIMEOUT = 5.0


def has_main_guard(source: str) -> bool:
    """Whether a script's top level holds an ``if`` on ``__name__`` (``if __name__ == "__main__":`` or a variant)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return True  # not a script this check can judge
    return any(isinstance(node, ast.If) and any(isinstance(n, ast.Name) and n.id == "__name__"
                                                for n in ast.walk(node.test))
               for node in tree.body)


def main_script() -> Path | None:
    """The file a spawned child would import as its main module, or None when it imports none (an interactive
    session, ``python -c``, ``python -m package`` through its ``__main__``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None:
        if name == "__main__" or name.endswith(".__main__"):
            return None
        path = getattr(spec, "origin", None)
    else:
        path = getattr(main, "__file__", None)
    return Path(path) if path else None


def check_main_guard(what: str) -> None:
    """Refuse to spawn ``what`` from a main script without an ``if __name__ == "__main__":`` guard."""
    path = main_script()
    if path is None:
        return
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if not has_main_guard(source):
        raise ModelError(f"cannot start {what}: the script {path} has no `if __name__ == \"__main__\":` guard, "
                         "and a spawned process imports the main script again, running all of it; put the code "
                         "that runs the engine under `if __name__ == \"__main__\":`")


def exit_cause(process) -> str:
    """How a child ended, in words."""
    code = process.exitcode
    if code is None:
        return "closed its pipe but is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        cause = f"was killed by {name}"
        if -code == signal.SIGKILL:
            cause += " (the out-of-memory killer sends it when the host runs out of memory)"
        return cause
    return f"exited with code {code}"


def died(process, what: str, started: bool) -> ModelError:
    process.join(timeout=REAP_TIMEOUT)
    if not started:
        return ModelError(f"{what} {exit_cause(process)} before it started (its error, if any, is on stderr "
                          "above); where a script runs the engine at import time, guard the script's entry point with "
                          '`if __name__ == "__main__":` (a spawned process imports the main script again, running its '
                          "top-level code)")
    return ModelError(f"{what} {exit_cause(process)}; what it was doing is lost (a scan run again resumes where "
                      "this one stopped)")


def send(conn, process, what: str, message) -> None:
    """``conn.send(message)`` to a started child, or a ModelError saying how it ended when it is gone."""
    try:
        conn.send(message)
    except OSError:
        raise died(process, what, started=True) from None


def receive_all(children: Sequence[tuple], timeout: float | None = None, started: bool = True) -> list:
    """One message from each (conn, process, what), in order; a ModelError as soon as one of the children dies,
    or when ``timeout`` seconds pass without all of them answering (a timeout is for start-up only)."""
    replies: dict[int, object] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    while len(replies) < len(children):
        waiting = [i for i in range(len(children)) if i not in replies]
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = wait([children[i][0] for i in waiting] + [children[i][1].sentinel for i in waiting], left)
        if not ready:
            names = ", ".join(children[i][2] for i in waiting)
            raise ModelError(f"{names} did not start within {timeout:.0f} s: the host is too busy to start a Python "
                             "process, or the process is stuck importing its modules")
        for i in waiting:
            conn, process, what = children[i]
            exited = process.sentinel in ready
            # What a child sent before it died is read first; an empty pipe of a dead child is not waited on.
            if conn in ready or (exited and conn.poll()):
                try:
                    replies[i] = conn.recv()
                except (EOFError, OSError):
                    raise died(process, what, started) from None
            elif exited:
                raise died(process, what, started)
    return [replies[i] for i in range(len(children))]


def receive(conn, process, what: str, timeout: float | None = None, started: bool = True):
    """One message from a child; see ``receive_all``."""
    return receive_all([(conn, process, what)], timeout, started)[0]
