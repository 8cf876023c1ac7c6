"""Float8 projections: e4m3 weights scaled per output row, activations scaled per token, ``torch._scaled_mm``.

Each activation is scaled and cast in one pass over its row, fused with the work that produces it where the
engine allows: ``rms_norm_quantize`` (the RMSNorm before q/k/v and before the MLP), ``silu_mul_quantize`` (the
gated MLP's SiLU(gate) * up before the down projection) and ``quantize_rows`` (the attention output). On CUDA they
are Triton kernels, one program per token; elsewhere, or without Triton, the same arithmetic in torch (the
``*_reference`` functions, which the kernels are tested against). Separate scale and cast kernels would read and
write each activation several times over, which costs about what the float8 products save.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from screener.classifiers import identity
from screener.errors import ModelError

FP8_MAX = 448.0  # the largest float8 e4m3 value
MIN_CAPABILITY = (8, 9)
# What float8 computes, in the id of its scores: change it when the float8 arithmetic changes.
SCHEME = "e4m3; weights scaled per output row, activations per token"
MIN_AMAX = 1e-12  # a row of zeros gets this scale instead of zero


@dataclass
class Quantized:
    """Activations in float8 with one float32 scale per token: ``q`` [..., k] e4m3, ``scale`` [..., 1];
    ``dtype`` is the dtype of the activations they stand for (the projections' output dtype)."""

    q: object
    scale: object
    dtype: object

    @property
    def shape(self):
        return self.q.shape

    def __getitem__(self, index) -> "Quantized":
        return Quantized(self.q[index], self.scale[index], self.dtype)


@dataclass
class FP8Weight:
    """A projection's weight in float8 (e4m3) with one scale per output row, laid out as torch._scaled_mm wants
    its second operand: [in, out], column-major."""

    qt: object
    scale: object  # float32 [1, out]

    def linear(self, x, bias, part: slice | None = None):
        """x @ weight[part].T + bias[part]: x (or its ``Quantized`` form) scaled per row to float8, the product in
        float32, the result in x's dtype."""
        import torch

        if not isinstance(x, Quantized):
            x = quantize_rows(x)
        if part is not None and bias is not None:
            bias = bias[part]
        qt, scale = (self.qt, self.scale) if part is None else (self.qt[:, part], self.scale[:, part])
        k = x.q.shape[-1]
        out = torch._scaled_mm(x.q.reshape(-1, k), qt, scale_a=x.scale.reshape(-1, 1), scale_b=scale,
                               out_dtype=x.dtype)
        if bias is not None:
            out = out + bias
        return out.view(*x.q.shape[:-1], out.shape[-1])


def to_fp8(weight) -> FP8Weight:
    import torch

    w = weight.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=MIN_AMAX) / FP8_MAX
    return FP8Weight(qt=(w / scale).to(torch.float8_e4m3fn).t(), scale=scale.t().contiguous())


def scored_model_id(model_id: str) -> str:
    """The id of scores made with float8 projections from a model whose scores carry ``model_id``: float8's
    rounding changes some labels, so they are another model's, never mixed with the bf16 scores."""
    return identity.model_id(identity.LLM_LABELTOKEN_ENGINE, {"model": model_id, "fp8": SCHEME})


def check_device(device) -> None:
    """Refuse a GPU without float8 matrix units (compute capability below 8.9), before any weights load."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise ModelError(
            f"fp8 needs a GPU with float8 matrix units, compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} "
            f"or later (Ada, Hopper or newer), but {device} is {torch.cuda.get_device_name(device)} (compute "
            f"capability {capability[0]}.{capability[1]}): turn fp8 off (--no-gpu-fp8, or gpu_fp8 = false in "
            "screener.toml) on this machine")


def check_supported(device, weights) -> None:
    """Refuse a GPU without float8 matrix units and projection sizes ``torch._scaled_mm`` cannot take."""
    check_device(device)
    if any(d % 16 for w in weights for d in w.shape):
        raise ModelError(f"fp8 needs projection sizes that are multiples of 16, found "
                         f"{[tuple(w.shape) for w in weights]}: turn fp8 off (--no-gpu-fp8, or gpu_fp8 = false) "
                         "for this model")


# ---- the activation quantizers --------------------------------------------------------------------------------

def quantize_rows(x) -> Quantized:
    """x [..., k] scaled per row so that its largest magnitude is e4m3's largest value, and cast."""
    kernels = triton_kernels() if x.is_cuda else None
    if kernels is None:
        return quantize_rows_reference(x)
    return _launch(kernels.quantize_rows, x, x.shape[-1], x.dtype)


def rms_norm_quantize(x, weight, eps: float) -> Quantized:
    """RMSNorm of x [..., k] (weight * x / rms(x), in float32), quantized as ``quantize_rows`` does."""
    kernels = triton_kernels() if x.is_cuda else None
    if kernels is None:
        return rms_norm_quantize_reference(x, weight, eps)
    return _launch(kernels.rms_norm_quantize, x, x.shape[-1], x.dtype, weight, eps)


def silu_mul_quantize(gate_up) -> Quantized:
    """SiLU(gate) * up (in float32) for gate_up [..., 2m] holding gate then up, quantized as ``quantize_rows``
    does: [..., m]."""
    kernels = triton_kernels() if gate_up.is_cuda else None
    if kernels is None:
        return silu_mul_quantize_reference(gate_up)
    return _launch(kernels.silu_mul_quantize, gate_up, gate_up.shape[-1] // 2, gate_up.dtype)


def quantize_rows_reference(x, dtype=None) -> Quantized:
    import torch

    rows = x.float()
    scale = rows.abs().amax(dim=-1, keepdim=True).clamp(min=MIN_AMAX) / FP8_MAX
    return Quantized((rows / scale).to(torch.float8_e4m3fn), scale, dtype or x.dtype)


def rms_norm_quantize_reference(x, weight, eps: float) -> Quantized:
    import torch.nn.functional as F

    return quantize_rows_reference(F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps), x.dtype)


def silu_mul_quantize_reference(gate_up) -> Quantized:
    import torch.nn.functional as F

    gate, up = gate_up.float().chunk(2, dim=-1)
    return quantize_rows_reference(F.silu(gate) * up, gate_up.dtype)


def _launch(kernel, x, width: int, dtype, *extra) -> Quantized:
    """One program per row of x; the kernel reads x's rows (``x.stride(-2)`` apart) and writes ``width`` float8
    values and one scale per row."""
    import torch

    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    q = torch.empty((rows, width), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    if rows:
        kernel(x2, q, scale, *extra)
    lead = x.shape[:-1]
    return Quantized(q.view(*lead, width), scale.view(*lead, 1), dtype)


@functools.lru_cache(maxsize=1)
def triton_kernels():
    """The module of Triton kernels, or None where Triton cannot be imported (a CPU-only torch)."""
    try:
        from screener.classifiers.gpu import fp8_kernels
    except ImportError:
        return None
    return fp8_kernels
