"""The torch device a classifier runs on, and how it uses a CPU's cores and matrix units."""

from __future__ import annotations

import glob
import os
import sys

from screener.errors import ModelError


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


def certainly_no_cuda() -> bool:
    """True on a Linux host with no NVIDIA device node: CUDA cannot be there, and finding that out needs no torch."""
    return sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/dxg")


def resolve_cpu_or_cuda(device: str) -> str:
    """``resolve_device`` without importing torch where the answer is the CPU anyway (``cpu``, or ``auto`` on a host
    without a GPU)."""
    if device == "cpu" or (device == "auto" and certainly_no_cuda()):
        return "cpu"
    return resolve_device(device)


def cpuinfo_bf16() -> bool:
    """``native_cpu_bf16`` read from /proc/cpuinfo's flags, without torch (False where there is no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_tile", "amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively; where it only emulates bf16, fp32 is faster."""
    import torch

    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None),
              getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check is not None and check() for check in checks)


def cpu_threads(requested: int = 0) -> int:
    """Threads for a model on the CPU: ``requested`` when above 0, else OMP_NUM_THREADS where set, else one per core
    this process may use (on a machine shared with other jobs, more threads than free cores spin against each
    other)."""
    if requested > 0:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


def use_all_cores(requested: int = 0) -> None:
    """Set torch's thread count to ``cpu_threads(requested)``."""
    import torch

    torch.set_num_threads(cpu_threads(requested))
