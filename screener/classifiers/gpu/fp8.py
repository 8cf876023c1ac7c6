"""Float8 projections: e4m3 weights scaled per output row, activations scaled per token, ``torch._scaled_mm``.

It keeps SST-2 accuracy, but scaling the activations unfused costs about what the faster products save on large
models' shapes, so the engine leaves it off unless asked (README, "GPU scoring").
"""

from __future__ import annotations

from dataclasses import dataclass

from screener.errors import ModelError

FP8_MAX = 448.0  # the largest float8 e4m3 value


@dataclass
class FP8Weight:
    """A projection's weight in float8 (e4m3) with one scale per output row, laid out as torch._scaled_mm wants
    its second operand: [in, out], column-major."""

    qt: object
    scale: object  # float32 [1, out]

    def linear(self, x, bias, part: slice | None = None):
        """x @ weight[part].T + bias[part]: x scaled per row to float8, the product in float32, the result in x's
        dtype."""
        import torch

        if part is not None and bias is not None:
            bias = bias[part]
        qt, scale = (self.qt, self.scale) if part is None else (self.qt[:, part], self.scale[:, part])
        rows = x.reshape(-1, x.shape[-1])
        x_scale = rows.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
        out = torch._scaled_mm((rows / x_scale).to(torch.float8_e4m3fn), qt, scale_a=x_scale, scale_b=scale,
                               out_dtype=x.dtype)
        if bias is not None:
            out = out + bias
        return out.view(*x.shape[:-1], out.shape[-1])


def to_fp8(weight) -> FP8Weight:
    import torch

    w = weight.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return FP8Weight(qt=(w / scale).to(torch.float8_e4m3fn).t(), scale=scale.t().contiguous())


def check_supported(device, weights) -> None:
    """Refuse a GPU without float8 matrix units and projection sizes ``torch._scaled_mm`` cannot take."""
    import torch

    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise ModelError(f"fp8 needs a GPU of compute capability 8.9 or later (Ada, Hopper), found "
                         f"{torch.cuda.get_device_name(device)}: leave fp8 off")
    if any(d % 16 for w in weights for d in w.shape):
        raise ModelError(f"fp8 needs projection sizes that are multiples of 16, found "
                         f"{[tuple(w.shape) for w in weights]}: leave fp8 off")
