"""The GPU engine's optional fast paths as a scan chooses them, and what happens where they cannot apply.

Each path is an option of ``LabelTokenEngine`` and a setting of its own (``gpu_`` and the path's name):

- ``fp8``: float8 projections with the activations quantized inside fused kernels (``fp8``); its rounding changes
  some labels, so its scores carry a model id of their own (``fp8.scored_model_id``);
- ``cuda_graphs``: the forward replayed as CUDA graphs over bucketed batch shapes (``graphs``);
- ``fused``: prefix attention without the per-row K/V copy, the rotary embedding and SiLU(gate) * up as single
  Triton kernels (``fused``).

They speed up ``llm-labeltoken`` models on CUDA. Elsewhere (an encoder model, the CPU, a model type the engine
does not run) a path that was asked for is ignored with one warning, so one ``screener.toml`` serves CPU and GPU
machines; float8 asked of a GPU without float8 matrix units is a ``ModelError``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

log = logging.getLogger(__name__)

SETTING_PREFIX = "gpu_"


@dataclass(frozen=True)
class FastPaths:
    fp8: bool = False
    cuda_graphs: bool = False
    fused: bool = False

    @classmethod
    def of(cls, settings) -> "FastPaths":
        """The paths a ``Settings`` asks for."""
        return cls(**{f.name: getattr(settings, SETTING_PREFIX + f.name) for f in fields(cls)})

    def settings(self) -> dict[str, bool]:
        """The paths as settings: ``{"gpu_fp8": ..., ...}``."""
        return {SETTING_PREFIX + f.name: getattr(self, f.name) for f in fields(self)}

    def names(self) -> list[str]:
        """The settings of the paths that are on."""
        return [name for name, on in self.settings().items() if on]

    def engine_options(self) -> dict[str, bool]:
        """``LabelTokenEngine``'s keyword arguments for these paths."""
        return {"fp8": self.fp8, "cuda_graphs": self.cuda_graphs, "fused_attention": self.fused,
                "fused_rotary": self.fused, "fused_mlp": self.fused}

    def ignored(self, why: str) -> "FastPaths":
        """No paths, after one warning naming those that were asked for and ``why`` they cannot apply."""
        if self.names():
            log.warning("%s ignored: %s", ", ".join(self.names()), why)
        return FastPaths()
