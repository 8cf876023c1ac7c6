"""The run summary a scan hands to tools: ``scan --results-json PATH`` writes it and ``--notify-command`` reads it on
stdin.

A finished scan's summary is the ``scan --json`` document (run id, model, counts, seconds) with ``"status":
"completed"`` and ``"exit_code": 0`` added. A scan that failed or was interrupted gives ``"status": "failed"`` or
``"interrupted"``, the error line the command printed and the exit code it returns, plus the counts of the run when
it got that far (a report that could not be written after a completed scan).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from screener.errors import StorageError
from screener.files import write_atomically

COMPLETED = "completed"
FAILED = "failed"
INTERRUPTED = "interrupted"


def completed(summary: dict[str, Any]) -> dict[str, Any]:
    return {"status": COMPLETED, "exit_code": 0, **summary}


def failed(status: str, error: str, exit_code: int, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(summary or {}), "status": status, "exit_code": exit_code, "error": error}


def encode(summary: dict[str, Any]) -> bytes:
    return (json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def write(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write the summary atomically, mode 0600 (see :func:`screener.files.write_atomically`)."""
    path = Path(path)
    try:
        return write_atomically(path, encode(summary))
    except OSError as exc:
        raise StorageError(f"could not write the run summary to {path}: {exc.strerror or exc}; check that the "
                           "folder exists and is writable") from exc
