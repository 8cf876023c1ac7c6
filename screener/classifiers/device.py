"""The torch device a classifier runs on, and how it uses a CPU's cores and matrix units."""

from __future__ import annotations

import os

from screener.errors import ModelError


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively; where it only emulates bf16, fp32 is faster."""
    import torch

    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None),
              getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check is not None and check() for check in checks)


def use_all_cores() -> None:
    """One torch thread per core this process may use, unless OMP_NUM_THREADS says otherwise (on a machine shared
    with other jobs, more threads than free cores spin against each other)."""
    import torch

    requested = os.environ.get("OMP_NUM_THREADS", "")
    if requested.isdigit() and int(requested) > 0:
        torch.set_num_threads(int(requested))
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores))
