"""The run summary a scan hands to tools: ``scan --results-json PATH`` writes it and ``--notify-command`` reads it on
stdin.

A finished scan's summary is the ``scan --json`` document (run id, model, counts, seconds) with ``"status":
"completed"`` and ``"exit_code": 0`` added. A scan that failed or was interrupted gives ``"status": "failed"`` or
``"interrupted"``, the error line the command printed and the exit code it returns, plus the counts of the run when
it got that far (a report that could not be written after a completed scan).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from screener import output

COMPLETED = "completed"
FAILED = "failed"
INTERRUPTED = "interrupted"


def completed(summary: dict[str, Any]) -> dict[str, Any]:
    return {"status": COMPLETED, "exit_code": 0, **summary}


def failed(status: str, error: str, exit_code: int, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(summary or {}), "status": status, "exit_code": exit_code, "error": error}


def encode(summary: dict[str, Any]) -> bytes:
    return (json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def write(path: str | Path, summary: dict[str, Any], protected: Iterable[str | Path] = ()) -> Path:
    """Write the summary through :func:`screener.output.write_file`: atomically, mode 0600, never over
    ``protected`` (the scan's archive and results database), another data file or anything not a regular file."""
    return output.write_file(path, encode(summary), protected=protected, mode=output.PRIVATE,
                             what="the run summary")
