"""One validated settings object: defaults, then ``screener.toml``, then command-line flags.

Every numeric setting declares its range beside its default (:class:`Range` in the field's metadata), and
``memory_limit`` its range in bytes; ``Settings`` refuses a value outside it, and NaN or infinity anywhere. The ranges
keep what the settings feed (SQL day intervals, DuckDB's thread pool and memory, top-N lists, report sizes) away
from overflow and from runs that never end."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from screener.errors import ConfigError

CONFIG_FILE = "screener.toml"
# How a model runs (see screener.classifiers.registry): auto picks ONNX Runtime for an encoder on a CPU without bf16
# matrix units where it is installed, torch otherwise.
BACKENDS = ("auto", "torch", "onnx", "onnx-fp32", "onnx-int8")
NOTIFY_TIMEOUT_RANGE = (1.0, 3600.0)


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: ``low`` to ``high``, both included unless ``low_open``; never NaN or
    infinity."""

    low: float
    high: float
    low_open: bool = False
    # What a special value means, for the error message (e.g. "0: automatic").
    note: str = ""

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        text = (f"above {self.low:g} and at most {self.high:g}" if self.low_open
                else f"between {self.low:g} and {self.high:g}")
        return f"{text} ({self.note})" if self.note else text


RANGE = "range"
BYTES_RANGE = "bytes_range"
# A window, baseline or chart of up to ten years: a day interval far from overflow, and a report of bounded size.
MAX_DAYS = 3660
# A hundred years, in hours.
MAX_HOURS = 876_000.0


def _ranged(default: float, low: float, high: float, low_open: bool = False, note: str = "") -> Any:
    return field(default=default, metadata={RANGE: Range(low, high, low_open, note)})


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
    backend: str = "auto"
    # Intra-op threads of the model on the CPU (ONNX Runtime or torch).
    model_threads: int = _ranged(0, 0, 1024, note="0: one per core this process may use")
    # The GPU engine's fast paths for llm-labeltoken models on CUDA (screener.classifiers.gpu.fast_paths): float8
    # projections, whose scores carry a model id of their own; CUDA graphs over bucketed batch shapes; fused Triton
    # kernels. Ignored, with a warning, for encoder models and on the CPU.
    gpu_fp8: bool = False
    gpu_cuda_graphs: bool = False
    gpu_fused: bool = False
    batch_size: int = _ranged(64, 1, 65_536)
    # Rows read, length-sorted and committed together; bounds memory and the work a kill can lose.
    window_rows: int = _ranged(4096, 1, 2**20)
    negative_threshold: float = _ranged(0.5, 0.0, 1.0)
    # Aggregation, the flag rules (see FLAG_RULES) and the escalation mark.
    short_window_days: int = _ranged(7, 1, MAX_DAYS)
    long_window_days: int = _ranged(30, 1, MAX_DAYS)
    last_n: int = _ranged(20, 1, 100_000)
    # high_negative_share: at least min_messages messages in the short window, a negative share of at least
    # min_ratio, and a Wilson lower bound of that share (at confidence_z) of at least min_lower_bound. Chosen on
    # simulated archives by benchmarks/flag_thresholds.py.
    min_ratio: float = _ranged(0.25, 0.0, 1.0)
    min_lower_bound: float = _ranged(0.125, 0.0, 1.0)
    min_messages: int = _ranged(5, 1, 10**9)
    # 10 is a confidence of 1 - 1e-23: beyond it the Wilson bound no longer changes in double precision.
    confidence_z: float = _ranged(1.96, 0.0, 10.0, low_open=True)
    baseline_days: int = _ranged(30, 1, MAX_DAYS)
    baseline_min_messages: int = _ranged(5, 1, 10**9)
    escalation_delta: float = _ranged(0.3, -1.0, 1.0)
    # Report.
    evidence_per_user: int = _ranged(5, 1, 1000)
    chart_days: int = _ranged(60, 1, MAX_DAYS)
    # Source freshness, as of the run's as-of time: how old the archive's newest message may be, in hours, before
    # the scan warns (a banner in the report, a line on stderr) and before it fails with exit code 8.
    freshness_warn_hours: float = _ranged(72.0, 0.0, MAX_HOURS, note="0: no warning")
    freshness_error_hours: float = _ranged(0.0, 0.0, MAX_HOURS, note="0: never an error")
    # Seconds `scan --notify-command` may run before it is killed; a slow mail or chat relay must not hold cron.
    notify_timeout_seconds: float = _ranged(60.0, *NOTIFY_TIMEOUT_RANGE)
    # Review: a flag whose user's latest decision is contacted, no-action or false-positive stays handled until the
    # user's flag-window share reaches the share at the decision plus handled_margin, or handled_days pass.
    handled_margin: float = _ranged(0.15, 0.0, 1.0)
    handled_days: int = _ranged(14, 1, 3650)
    # Flagged users per page of `screener serve`.
    serve_page_size: int = _ranged(50, 1, 1000)
    # DuckDB resources: a bounded memory limit keeps a nightly run's footprint flat as the archive grows.
    memory_limit: str = field(default="256MB", metadata={BYTES_RANGE: Range(16 * 2**20, 2**50)})
    threads: int = _ranged(0, 0, 256, note="0: automatic")

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            expected = type(f.default)
            if f.type in ("str", str):
                if not isinstance(value, str):
                    problems.append(f"{f.name} must be a string, got {_shown(value)}")
                    continue
            elif f.type in ("bool", bool):
                if not isinstance(value, bool):
                    problems.append(f"{f.name} must be true or false, got {_shown(value)}")
                continue
            elif isinstance(value, bool) or not isinstance(value, (int, float) if expected is float else int):
                problems.append(f"{f.name} must be {expected.__name__}, got {_shown(value)}")
                continue
            allowed = f.metadata.get(RANGE)
            if allowed is not None and not allowed.holds(value):
                problems.append(f"{f.name} must be {allowed.describe()}, got {_shown(value)}")
        if not problems:
            try:
                memory_bytes(self.memory_limit)
            except ValueError as exc:
                problems.append(str(exc))
            if self.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d{1,3}", self.device):
                problems.append(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
            if self.backend not in BACKENDS:
                problems.append(f"backend must be one of {', '.join(BACKENDS)}, got {_shown(self.backend)}")
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


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def ranges() -> dict[str, Range]:
    """Each numeric setting's range (``memory_limit``'s in bytes), by name."""
    return {f.name: f.metadata.get(RANGE) or f.metadata[BYTES_RANGE]
            for f in fields(Settings) if RANGE in f.metadata or BYTES_RANGE in f.metadata}


# The flag rules, in priority order (a user several rules match is flagged under the first), each with the settings
# its file sql/rules/<rule>.sql binds as $<setting>; see screener.rules for how to add one.
FLAG_RULES: dict[str, tuple[str, ...]] = {
    "high_negative_share": ("min_messages", "min_ratio", "min_lower_bound", "short_window_days"),
}

MIB_PER_THREAD = 64 * 2**20
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _size(size: float) -> str:
    for unit in ("tib", "gib", "mib", "kib"):
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{int(size // _UNITS[unit])}{unit[0].upper()}iB"
    return f"{int(size)}B"


def memory_bytes(limit: str) -> int:
    """Bytes in a DuckDB memory limit such as ``256MB`` or ``4GiB``, within ``memory_limit``'s range."""
    match = re.fullmatch(r"\s*(\d{1,20}(?:\.\d{1,20})?)\s*([a-zA-Z]+)\s*", limit)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"memory_limit must be a size such as 256MB or 4GiB, got {_shown(limit)}")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    allowed = _FIELDS["memory_limit"].metadata[BYTES_RANGE]
    if not allowed.holds(size):
        raise ValueError(f"memory_limit must be between {_size(allowed.low)} and {_size(allowed.high)}, "
                         f"got {_shown(limit)}")
    return size


def _coerce(name: str, value: Any, source: str) -> Any:
    expected = type(_FIELDS[name].default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        wanted = "true or false" if expected is bool else expected.__name__
        raise ConfigError(f"{source}: {name} must be {wanted}, found {type(value).__name__} {value!r}")
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
