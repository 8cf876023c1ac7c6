"""The Triton kernels behind ``fused``: attention over the cached prefix and each row's own tokens in one pass,
the rotary embedding of q and k in place, and SiLU(gate) * up. Imported only where Triton is
(``fused.triton_kernels``).

The attention kernel reads q straight from the rotated q/k projection [rows, width, heads + kv_heads, head_dim]
and writes the output in the layout the output projection takes [rows, width, heads * head_dim], so neither the
grouped-query fold nor its inverse is a copy. A program takes one row, one key/value head and a block of its
queries (grouped heads times positions); it first runs the online softmax over the prefix keys, shared by every
row and read from the one cached copy, then over the row's own keys up to each query's position. Ragged batches
(rows end to end, ``RAGGED``) give each row's first token and length by an offsets array instead of a fixed width.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _softmax_step(q, k, v, m_i, l_i, acc, allowed, scale):
    s = tl.dot(q, tl.trans(k)) * scale
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _prefix_attention(qk_ptr, v_ptr, pk_ptr, pv_ptr, o_ptr, starts_ptr, width, shared, scale,
                      sqk_r, sqk_w, sqk_h, sv_r, sv_w, sv_h, spk_h, spk_p, spv_h, spv_p, so_r, so_w,
                      N_HEADS: tl.constexpr, GROUPS: tl.constexpr, HEAD_DIM: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RAGGED: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if RAGGED:
        begin = tl.load(starts_ptr + row).to(tl.int64)
        width = (tl.load(starts_ptr + row + 1) - begin).to(tl.int32)
        qk_row, v_row, o_row = qk_ptr + begin * sqk_w, v_ptr + begin * sv_w, o_ptr + begin * so_w
        # The grid covers the longest row's queries: a shorter row's extra blocks have nothing to do.
        if tl.program_id(2) * BLOCK_M >= GROUPS * width:
            return
    else:
        qk_row, v_row, o_row = qk_ptr + row * sqk_r, v_ptr + row * sv_r, o_ptr + row * so_r
    kv = tl.program_id(1)
    m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < GROUPS * width
    head = kv * GROUPS + m // width
    pos = m % width
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(qk_row + pos[:, None] * sqk_w + head[:, None] * sqk_h + d[None, :],
                mask=m_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(0, shared, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < shared
        k = tl.load(pk_ptr + kv * spk_h + n[:, None] * spk_p + d[None, :], mask=n_ok[:, None], other=0.0)
        v = tl.load(pv_ptr + kv * spv_h + n[:, None] * spv_p + d[None, :], mask=n_ok[:, None], other=0.0)
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, n_ok[None, :], scale)
    k_head = N_HEADS + kv
    last = tl.minimum(tl.max(tl.where(m_ok, pos, 0), axis=0) + 1, width)
    for start in range(0, last, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < width
        k = tl.load(qk_row + n[:, None] * sqk_w + k_head * sqk_h + d[None, :], mask=n_ok[:, None],
                    other=0.0)
        v = tl.load(v_row + n[:, None] * sv_w + kv * sv_h + d[None, :], mask=n_ok[:, None],
                    other=0.0)
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, n[None, :] <= pos[:, None], scale)
    o = acc / l_i[:, None]
    tl.store(o_row + pos[:, None] * so_w + (head * HEAD_DIM)[:, None] + d[None, :],
             o.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])


@triton.jit
def _rotate(x_ptr, cos_ptr, sin_ptr, width, heads, sx_t, sx_h, sc_t, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    pos = token % width
    h = tl.arange(0, BLOCK_H)
    j = tl.arange(0, HALF)
    mask = (h < heads)[:, None]
    first = x_ptr + token * sx_t + h[:, None] * sx_h + j[None, :]
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + pos * sc_t + j).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + pos * sc_t + HALF + j).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + pos * sc_t + j).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + pos * sc_t + HALF + j).to(tl.float32)[None, :]
    tl.store(first, (x1 * c1 + x2 * s1).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(first + HALF, (x2 * c2 + x1 * s2).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul(x_ptr, o_ptr, n, x_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    gate = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_stride + n + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptr + row * n + cols, (gate / (1.0 + tl.exp(-gate)) * up).to(o_ptr.dtype.element_ty), mask=mask)


def prefix_attention(qk, v, prefix_k, prefix_v, out, n_heads: int, scale: float, starts=None,
                     longest: int = 0) -> None:
    """qk [rows, width, heads + kv_heads, head_dim] (unit stride last), v [rows, width, kv_heads, head_dim],
    prefix_k / prefix_v [kv_heads, shared, head_dim] (shared may be 0), out [rows, width, heads * head_dim].
    Ragged: qk, v and out of one row holding all tokens [1, tokens, ...], row i being tokens starts[i] to
    starts[i + 1] (int32 on the device), the longest ``longest`` tokens."""
    rows, width, _, head_dim = qk.shape
    n_kv = v.shape[2]
    groups = n_heads // n_kv
    shared = prefix_k.shape[1]
    block_m = 64
    if starts is not None:
        rows, width = starts.shape[0] - 1, longest
    grid = (rows, n_kv, triton.cdiv(groups * width, block_m))
    _prefix_attention[grid](qk, v, prefix_k, prefix_v, out, starts if starts is not None else qk, width, shared, scale,
                            qk.stride(0), qk.stride(1), qk.stride(2), v.stride(0), v.stride(1), v.stride(2),
                            prefix_k.stride(0), prefix_k.stride(1), prefix_v.stride(0), prefix_v.stride(1),
                            out.stride(0), out.stride(1), N_HEADS=n_heads, GROUPS=groups, HEAD_DIM=head_dim,
                            BLOCK_M=block_m, BLOCK_N=32, RAGGED=starts is not None, num_warps=4)


def rotate(x, cos, signed_sin) -> None:
    """In place: x [rows, width, heads, head_dim] (unit stride last, rows and width one stride apart),
    cos / signed_sin [width, head_dim]."""
    rows, width, heads, head_dim = x.shape
    _rotate[(rows * width,)](x, cos, signed_sin, width, heads, x.stride(1), x.stride(2), cos.stride(0),
                             HALF=head_dim // 2, BLOCK_H=triton.next_power_of_2(heads), num_warps=4)


def silu_mul(x, out) -> None:
    """x [rows, 2m] (gate then up, unit stride last), out [rows, m] contiguous."""
    n = out.shape[1]
    block = triton.next_power_of_2(n)
    _silu_mul[(x.shape[0],)](x, out, n, x.stride(0), BLOCK=block, num_warps=min(16, max(4, block // 1024)))
