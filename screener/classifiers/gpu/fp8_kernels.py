"""The Triton kernels behind ``fp8``'s activation quantizers: one program per row, which it reads once, keeping
the row in registers while it finds the row's largest magnitude, then writes it scaled and cast to float8 e4m3
with its float32 scale. Imported only where Triton is (``fp8.triton_kernels``).

Each launcher takes the input rows ``x`` [rows, k] (last dimension contiguous) and the outputs ``q`` [rows, width]
float8 and ``scale`` [rows, 1] float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)  # fp8.FP8_MAX
MIN_AMAX = tl.constexpr(1e-12)  # fp8.MIN_AMAX


@triton.jit
def _store_quantized(h, q_row, s_ptr, cols, mask):
    scale = tl.maximum(tl.max(tl.abs(h), axis=0), MIN_AMAX) / FP8_MAX
    tl.store(q_row + cols, (h / scale).to(q_row.dtype.element_ty), mask=mask)
    tl.store(s_ptr, scale)


@triton.jit
def _quantize_rows(x_ptr, q_ptr, s_ptr, n, x_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    _store_quantized(x, q_ptr + row * n, s_ptr + row, cols, mask)


@triton.jit
def _rms_norm_quantize(x_ptr, q_ptr, s_ptr, w_ptr, eps, n, x_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n + eps)
    _store_quantized(x * inv_rms * w, q_ptr + row * n, s_ptr + row, cols, mask)


@triton.jit
def _silu_mul_quantize(x_ptr, q_ptr, s_ptr, n, x_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    gate = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_stride + n + cols, mask=mask, other=0.0).to(tl.float32)
    _store_quantized(gate / (1.0 + tl.exp(-gate)) * up, q_ptr + row * n, s_ptr + row, cols, mask)


def _grid(width: int) -> dict:
    block = triton.next_power_of_2(width)
    # Enough warps that a row of 16k values takes 32 registers a thread.
    return {"BLOCK": block, "num_warps": min(16, max(4, block // 1024))}


def quantize_rows(x, q, scale) -> None:
    _quantize_rows[(x.shape[0],)](x, q, scale, q.shape[1], x.stride(0), **_grid(q.shape[1]))


def rms_norm_quantize(x, q, scale, weight, eps: float) -> None:
    _rms_norm_quantize[(x.shape[0],)](x, q, scale, weight, eps, q.shape[1], x.stride(0), **_grid(q.shape[1]))


def silu_mul_quantize(x, q, scale) -> None:
    _silu_mul_quantize[(x.shape[0],)](x, q, scale, q.shape[1], x.stride(0), **_grid(q.shape[1]))
