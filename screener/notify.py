"""The notification after a scan: ``--notify-command`` run with the run summary on stdin (for a Slack or mail
sender).

The command line is split like a shell would (:func:`shlex.split`) but run without a shell, so nothing in it is
expanded or interpreted. It runs in its own process group, with its output captured and logged on stderr; one that
outlives the timeout is killed with its whole group. Whatever the command does (fails, hangs, is missing) is logged
and never raised: a notification cannot change the scan's outcome or exit code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess

log = logging.getLogger(__name__)

# The most of the command's output the log quotes.
_TAIL_CHARS = 2000


def parse(command: str) -> list[str]:
    """The argument list of a command line; raises ValueError for an empty one or unbalanced quotes."""
    args = shlex.split(command)
    if not args:
        raise ValueError("the notify command is empty")
    return args


def _tail(output: bytes | None) -> str:
    text = (output or b"").decode("utf-8", "replace").strip()
    return text[-_TAIL_CHARS:]


def notify(args: list[str], payload: bytes, timeout: float) -> bool:
    """Run ``args`` with ``payload`` on stdin; True when it exits 0 within ``timeout`` seconds."""
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        log.error("notify command %s could not be started: %s", shlex.join(args), exc)
        return False
    try:
        output, _ = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.error("notify command %s did not finish within %g seconds and was killed", shlex.join(args), timeout)
        return False
    if proc.returncode != 0:
        log.error("notify command %s exited with %d%s", shlex.join(args), proc.returncode,
                  f": {_tail(output)}" if _tail(output) else "")
        return False
    if _tail(output):
        log.info("notify command %s: %s", shlex.join(args), _tail(output))
    return True
