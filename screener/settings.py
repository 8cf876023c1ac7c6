"""One validated settings object: defaults, then ``screener.toml``, then command-line flags."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from screener.errors import ConfigError

CONFIG_FILE = "screener.toml"
NOTIFY_TIMEOUT_RANGE = (1.0, 3600.0)


@dataclass(frozen=True)
class Settings:
    # Input: where the messages are and what their columns are called.
    table: str = "messages"
    id_column: str = "message_id"
    user_column: str = "user_id"
    time_column: str = "sent_at"
    text_column: str = "text"
    # Scoring.
    model: str = "default"
    device: str = "auto"
    batch_size: int = 64
    # Rows read, length-sorted and committed together; bounds memory and the work a kill can lose.
    window_rows: int = 4096
    negative_threshold: float = 0.5
    # Aggregation, the flag rules (see FLAG_RULES) and the escalation mark.
    short_window_days: int = 7
    long_window_days: int = 30
    last_n: int = 20
    min_ratio: float = 0.6
    min_messages: int = 5
    confidence_z: float = 1.96
    baseline_days: int = 30
    baseline_min_messages: int = 5
    escalation_delta: float = 0.3
    # Report.
    evidence_per_user: int = 5
    chart_days: int = 60
    # Seconds `scan --notify-command` may run before it is killed; a slow mail or chat relay must not hold cron.
    notify_timeout_seconds: float = 60.0
    # Review: a flag whose user's latest decision is contacted, no-action or false-positive stays handled until the
    # user's flag-window share reaches the share at the decision plus handled_margin, or handled_days pass.
    handled_margin: float = 0.15
    handled_days: int = 14
    # Flagged users per page of `screener serve`.
    serve_page_size: int = 50
    # DuckDB resources: a bounded memory limit keeps a nightly run's footprint flat as the archive grows.
    memory_limit: str = "256MB"
    threads: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "window_rows", "short_window_days", "long_window_days", "last_n",
                     "min_messages", "baseline_days", "evidence_per_user", "chart_days"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("negative_threshold", "min_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.confidence_z <= 0:
            problems.append(f"confidence_z must be positive, got {self.confidence_z}")
        if self.baseline_min_messages < 1:
            problems.append(f"baseline_min_messages must be at least 1, got {self.baseline_min_messages}")
        if not -1.0 <= self.escalation_delta <= 1.0:
            problems.append(f"escalation_delta must be between -1 and 1, got {self.escalation_delta}")
        if not NOTIFY_TIMEOUT_RANGE[0] <= self.notify_timeout_seconds <= NOTIFY_TIMEOUT_RANGE[1]:
            problems.append(f"notify_timeout_seconds must be between {NOTIFY_TIMEOUT_RANGE[0]:g} and "
                            f"{NOTIFY_TIMEOUT_RANGE[1]:g}, got {self.notify_timeout_seconds}")
        if not 0.0 <= self.handled_margin <= 1.0:
            problems.append(f"handled_margin must be between 0 and 1, got {self.handled_margin}")
        if not 1 <= self.handled_days <= 3650:
            problems.append(f"handled_days must be between 1 and 3650, got {self.handled_days}")
        if not 1 <= self.serve_page_size <= 1000:
            problems.append(f"serve_page_size must be between 1 and 1000, got {self.serve_page_size}")
        if self.threads < 0:
            problems.append(f"threads must be 0 (automatic) or more, got {self.threads}")
        try:
            memory_bytes(self.memory_limit)
        except ValueError as exc:
            problems.append(str(exc))
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    def duckdb_threads(self) -> int:
        """DuckDB threads: ``threads`` when set, else one per 64 MiB of ``memory_limit`` up to the core count.

        Each DuckDB thread keeps its own hash tables and buffers, so one thread per core on a machine with many
        cores can exhaust a small memory limit in the aggregation."""
        if self.threads:
            return self.threads
        return max(1, min(os.cpu_count() or 1, memory_bytes(self.memory_limit) // MIB_PER_THREAD))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_FIELDS = {f.name: f for f in fields(Settings)}

# The flag rules, in priority order (a user several rules match is flagged under the first), each with the settings
# its file sql/rules/<rule>.sql binds as $<setting>; see screener.rules for how to add one.
FLAG_RULES: dict[str, tuple[str, ...]] = {
    "high_negative_share": ("min_messages", "min_ratio", "short_window_days"),
}

MIB_PER_THREAD = 64 * 2**20
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def memory_bytes(limit: str) -> int:
    """Bytes in a DuckDB memory limit such as ``256MB`` or ``4GiB``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", limit)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"memory_limit must be a size such as 256MB or 4GiB, got {limit!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _coerce(name: str, value: Any, source: str) -> Any:
    expected = type(getattr(Settings(), name))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"{source}: {name} must be {expected.__name__}, found {type(value).__name__} {value!r}"
        )
    return value


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then the TOML file (``config_path``, else ``./screener.toml`` if present), then ``overrides``.

    Overrides whose value is None are ignored, so unset command-line flags keep the file's values.
    """
    values: dict[str, Any] = {}
    path = Path(config_path) if config_path is not None else Path(CONFIG_FILE)
    if config_path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist: expected a TOML file like examples/screener.toml")
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        # Sections are for readability only; keys are unique across them.
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        unknown = sorted(set(flat) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {unknown}; known: {sorted(_FIELDS)}")
        values.update({k: _coerce(k, v, str(path)) for k, v in flat.items()})
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, value, "command line")
    return dataclasses.replace(Settings(), **values)
