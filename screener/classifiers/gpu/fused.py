"""Fused bf16 pieces of the engine's forward, each one kernel where the eager forward runs several:

- ``prefix_attention``: attention of each row's queries over the cached prefix keys/values and the row's own
  (causal), without building the per-row copy of the prefix that a single attention call over [prefix, row] needs;
- ``rotate_``: the rotary embedding of q and k in place (the two products, the half swap and the sum);
- ``silu_mul``: SiLU(gate) * up of the gated MLP.

On CUDA they are Triton kernels (``fused_kernels``); elsewhere, or without Triton, the same arithmetic in torch
(the ``*_reference`` functions, which the kernels are tested against). Under Triton's interpreter
(``TRITON_INTERPRET=1``) the kernels also run on CPU tensors, which is how the engine is tested with them off a GPU.
"""

from __future__ import annotations

import functools
import os


def prefix_attention(qk, v, prefix_k, prefix_v, n_heads: int, scale: float, starts=None, longest: int = 0):
    """Attention output [rows, width, heads * head_dim] for rotated q and k in ``qk`` [rows, width, heads +
    kv_heads, head_dim] (q heads first) and v [rows, width, kv_heads, head_dim]: every query sees all ``shared``
    prefix positions of prefix_k / prefix_v [1, kv_heads, shared, head_dim] (None: no prefix) and its row's
    positions up to its own.

    Ragged: with ``starts`` (int32 [rows + 1] on qk's device) qk and v hold every row's tokens end to end as one
    row [1, tokens, ...], row i being tokens starts[i] to starts[i + 1], the longest ``longest`` tokens; the
    output is [1, tokens, heads * head_dim]."""
    import torch

    kernels = triton_kernels(qk)
    head_dim = qk.shape[-1]
    if kernels is None or head_dim < 16 or head_dim & (head_dim - 1) or qk.stride(-1) != 1 or v.stride(-1) != 1:
        if starts is not None:
            return ragged_attention_reference(qk, v, prefix_k, prefix_v, n_heads, scale, starts)
        return prefix_attention_reference(qk, v, prefix_k, prefix_v, n_heads, scale)
    rows, width = qk.shape[:2]
    if prefix_k is None:
        prefix_k = prefix_v = qk.new_empty((v.shape[2], 0, head_dim))
    else:
        prefix_k, prefix_v = prefix_k[0], prefix_v[0]
        if prefix_k.stride(-1) != 1 or prefix_v.stride(-1) != 1:
            prefix_k, prefix_v = prefix_k.contiguous(), prefix_v.contiguous()
    out = torch.empty((rows, width, n_heads * head_dim), dtype=qk.dtype, device=qk.device)
    if rows and width:
        kernels.prefix_attention(qk, v, prefix_k, prefix_v, out, n_heads, scale, starts, longest)
    return out


def ragged_attention_reference(qk, v, prefix_k, prefix_v, n_heads: int, scale: float, starts):
    """``prefix_attention_reference`` of each row of a ragged batch in turn."""
    import torch

    bounds = starts.tolist()
    return torch.cat([prefix_attention_reference(qk[:, a:b], v[:, a:b], prefix_k, prefix_v, n_heads, scale)
                      for a, b in zip(bounds, bounds[1:])], 1)


def prefix_attention_reference(qk, v, prefix_k, prefix_v, n_heads: int, scale: float):
    import torch
    import torch.nn.functional as F

    rows, width, _, head_dim = qk.shape
    n_kv = v.shape[2]
    groups = n_heads // n_kv
    q = qk[:, :, :n_heads].view(rows, width, n_kv, groups, head_dim)
    q = q.permute(0, 2, 3, 1, 4).reshape(rows, n_kv, groups * width, head_dim)
    k, v = qk[:, :, n_heads:].transpose(1, 2), v.transpose(1, 2)
    shared = 0
    if prefix_k is not None:
        shared = prefix_k.shape[2]
        k = torch.cat((prefix_k.expand(rows, -1, -1, -1), k), 2)
        v = torch.cat((prefix_v.expand(rows, -1, -1, -1), v), 2)
    q_pos = torch.arange(width, device=qk.device).repeat(groups)
    blocked = torch.arange(shared + width, device=qk.device)[None, :] - shared > q_pos[:, None]
    mask = torch.zeros(blocked.shape, dtype=qk.dtype, device=qk.device).masked_fill_(blocked, float("-inf"))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return o.view(rows, n_kv, groups, width, head_dim).permute(0, 3, 1, 2, 4).reshape(rows, width, -1)


def rotate_(x, cos, signed_sin):
    """x [rows, width, heads, head_dim] rotated in place by cos / signed_sin [width, head_dim] (sin with its
    first half negated, as the engine keeps it); returns x."""
    kernels = triton_kernels(x)
    rows, width, _, head_dim = x.shape
    half = head_dim // 2
    if (kernels is None or head_dim % 2 or half & (half - 1) or x.stride(-1) != 1
            or x.stride(0) != width * x.stride(1) or cos.stride(-1) != 1 or signed_sin.stride() != cos.stride()):
        x.copy_(rotate_reference(x, cos, signed_sin))
    elif rows and width:
        kernels.rotate(x, cos, signed_sin)
    return x


def rotate_reference(x, cos, signed_sin):
    import torch

    half = x.shape[-1] // 2
    cos, signed_sin = cos[:, None, :], signed_sin[:, None, :]
    return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin


def silu_mul(gate_up):
    """SiLU(gate) * up for gate_up [..., 2m] holding gate then up: [..., m]."""
    import torch

    kernels = triton_kernels(gate_up)
    if kernels is None:
        return silu_mul_reference(gate_up)
    x2 = gate_up.reshape(-1, gate_up.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n = gate_up.shape[-1] // 2
    out = torch.empty((x2.shape[0], n), dtype=gate_up.dtype, device=gate_up.device)
    if x2.shape[0]:
        kernels.silu_mul(x2, out)
    return out.view(*gate_up.shape[:-1], n)


def silu_mul_reference(gate_up):
    import torch.nn.functional as F

    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def triton_kernels(x):
    """The module of Triton kernels for tensors like x (on CUDA, or anywhere under Triton's interpreter), or None."""
    if not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return None
    return _kernels()


@functools.lru_cache(maxsize=1)
def _kernels():
    try:
        from screener.classifiers.gpu import fused_kernels
    except ImportError:
        return None
    return fused_kernels
