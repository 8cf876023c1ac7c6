"""The fused bf16 pieces of the engine's forward: the torch references on hand-computed inputs, the Triton kernels
against them (under Triton's interpreter on CPU, in float32; on a GPU in bf16), and the engine with every fused
option on scoring like the engine without them, on a tiny Llama and a tiny Qwen2 (the kernels under the
interpreter, in a subprocess, and the references in this process)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from screener.classifiers.gpu import fused  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FUSED = {"fused_attention": True, "fused_rotary": True, "fused_mlp": True}


def triton_present() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def test_silu_mul_reference_takes_gate_then_up():
    got = fused.silu_mul_reference(torch.tensor([[0.0, 2.0, 3.0, -1.0]]))
    torch.testing.assert_close(got, torch.tensor([[0.0, -2 / (1 + math.exp(-2))]]))


def test_rotate_reference_turns_each_pair_by_its_angle():
    # head_dim 2: the pair (x0, x1) turned by the angle a (cos a, signed sin (-sin a, sin a)).
    a = 0.5
    cos = torch.tensor([[math.cos(a), math.cos(a)]])
    signed_sin = torch.tensor([[-math.sin(a), math.sin(a)]])
    x = torch.tensor([[[[1.0, 0.0]]]])
    torch.testing.assert_close(fused.rotate_reference(x, cos, signed_sin),
                               torch.tensor([[[[math.cos(a), math.sin(a)]]]]))


def test_prefix_attention_reference_sees_the_prefix_and_earlier_positions_only():
    # One head, head_dim 1, zero queries: each output is the mean of the values it may see.
    qk = torch.zeros(1, 3, 2, 1)
    v = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    prefix_v = torch.tensor([4.0]).view(1, 1, 1, 1)
    got = fused.prefix_attention_reference(qk, v, torch.zeros(1, 1, 1, 1), prefix_v, 1, 1.0)
    torch.testing.assert_close(got.flatten(), torch.tensor([7.0, 34 / 3, 16.0]))
    got = fused.prefix_attention_reference(qk, v, None, None, 1, 1.0)
    torch.testing.assert_close(got.flatten(), torch.tensor([10.0, 15.0, 20.0]))


def cases(device: str, dtype):
    """(name, kernel call, reference) over shapes that take several query and key blocks and strided inputs."""
    torch.manual_seed(0)
    rows, width, heads, kv, head_dim, shared = 3, 40, 4, 2, 16, 37
    qkv = torch.randn(rows, width, heads + 2 * kv, head_dim, device=device).to(dtype)
    qk, v = qkv[:, :, : heads + kv], qkv[:, :, heads + kv:]
    cache = torch.randn(2, 1, shared + 5, kv, head_dim, device=device).to(dtype).transpose(2, 3)[:, :, :, :shared]
    cos = torch.randn(width, head_dim, device=device).to(dtype)
    signed_sin = torch.randn(width, head_dim, device=device).to(dtype)
    gate_up = torch.randn(5, 7, 96, device=device).to(dtype)[:, 1:]
    rotated = fused.rotate_reference(qk, cos, signed_sin)
    out = [("silu_mul", fused.silu_mul(gate_up), fused.silu_mul_reference(gate_up)),
           ("rotate_", fused.rotate_(qk.clone(), cos, signed_sin), rotated),
           ("rotate_ in place", fused.rotate_(qkv[:, :, : heads + kv], cos, signed_sin), rotated)]
    # qkv was rotated in place just above: rotated q and k, as the engine hands them over.
    for k_v in ((cache[0], cache[1]), (None, None)):
        out.append((f"prefix_attention {'with' if k_v[0] is not None else 'without'} a prefix",
                    fused.prefix_attention(qk, v, *k_v, heads, 0.3),
                    fused.prefix_attention_reference(qk, v, *k_v, heads, 0.3)))
    # Ragged: rows of 1, 40, 7 and 33 tokens end to end (several query blocks for the long ones, and a row that
    # ends inside a key block), each row against the reference of that row alone.
    lengths = [1, 40, 7, 33]
    starts = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32, device=device)
    flat = torch.randn(1, sum(lengths), heads + 2 * kv, head_dim, device=device).to(dtype)
    qk_r, v_r = flat[:, :, : heads + kv], flat[:, :, heads + kv:]
    bounds = starts.tolist()
    for k_v in ((cache[0], cache[1]), (None, None)):
        rows = [fused.prefix_attention_reference(qk_r[:, a:b], v_r[:, a:b], *k_v, heads, 0.3)
                for a, b in zip(bounds, bounds[1:])]
        out.append((f"ragged prefix_attention {'with' if k_v[0] is not None else 'without'} a prefix",
                    fused.prefix_attention(qk_r, v_r, *k_v, heads, 0.3, starts, max(lengths)), torch.cat(rows, 1)))
    return out


# Each kernel wrapper counted, so a child can tell the kernels ran rather than a fallback.
COUNT_KERNEL_CALLS = textwrap.dedent("""
    from screener.classifiers.gpu import fused_kernels

    calls = []
    for name in ("prefix_attention", "rotate", "silu_mul"):
        def counted(*args, _kernel=getattr(fused_kernels, name), _name=name):
            calls.append(_name)
            return _kernel(*args)
        setattr(fused_kernels, name, counted)
""")

INTERPRETED = COUNT_KERNEL_CALLS + textwrap.dedent("""
    import sys
    import torch

    sys.path.insert(0, "tests")
    from test_fused_kernels import cases

    for name, got, ref in cases("cpu", torch.float32):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=name)
    assert sorted(set(calls)) == ["prefix_attention", "rotate", "silu_mul"], calls
    print("ok")
""")


def interpret(source: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.skipif(not triton_present(), reason="needs Triton")
def test_triton_kernels_compute_the_reference_under_the_interpreter():
    proc = interpret(INTERPRETED)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@cuda
@pytest.mark.skipif(not triton_present(), reason="needs Triton")
def test_triton_kernels_match_the_reference_on_cuda_in_bf16():
    for name, got, ref in cases("cuda", torch.bfloat16):
        assert got.dtype == torch.bfloat16, name
        # The kernels round once where the references round after every step.
        torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=2e-2, msg=name)


def engines(fused_options: dict):
    """Probabilities of the tiny Llama and the tiny Qwen2 engines with ``fused_options``."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_engine_qwen2 as qwen2
    import test_llm_engine as llama
    from screener.classifiers.base import THREE_WAY_LABELS
    from screener.classifiers.gpu.runner import LabelTokenEngine
    from screener.prompt import label_token_ids

    texts = llama.tricky_texts(6) + ["a longer message that makes its batch wider than the others, by some way"]
    model, tokenizer, label_ids, _ = llama.make_engine(0)
    out = [LabelTokenEngine(model, tokenizer, label_ids, **fused_options).predict_proba(texts)]
    tokenizer = qwen2.tiny_tokenizer()
    label_ids = label_token_ids(tokenizer, THREE_WAY_LABELS)
    out.append(LabelTokenEngine(qwen2.tiny_qwen2(), tokenizer, label_ids, labels=THREE_WAY_LABELS,
                                **fused_options).predict_proba(qwen2.TEXTS))
    return out


ENGINES = COUNT_KERNEL_CALLS + textwrap.dedent("""
    import sys
    import numpy as np

    sys.path.insert(0, "tests")
    from test_fused_kernels import FUSED, engines

    got = engines(FUSED)
    assert sorted(set(calls)) == ["prefix_attention", "rotate", "silu_mul"], calls
    np.save(sys.argv[1], np.concatenate([p.ravel() for p in got]))
""")


@pytest.mark.skipif(not triton_present(), reason="needs Triton")
def test_engine_with_the_fused_kernels_scores_like_the_engine_without(tmp_path):
    path = tmp_path / "fused.npy"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", ENGINES, str(path)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = engines({})
    assert all(p.max() - p.min() > 0.1 for p in expected)  # not near-constant outputs
    np.testing.assert_allclose(np.load(path), np.concatenate([p.ravel() for p in expected]), atol=2e-5, rtol=0)


def test_engine_with_the_fused_options_off_cuda_scores_like_the_engine_without():
    for got, expected in zip(engines(FUSED), engines({})):
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


@cuda
@pytest.mark.skipif(not triton_present(), reason="needs Triton")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_engine_with_the_fused_kernels_on_cuda_stays_close_to_bf16(cuda_graphs):
    sys.path.insert(0, str(ROOT / "tests"))
    import test_llm_engine as llama
    from screener.classifiers.gpu.runner import LabelTokenEngine
    from screener.prompt import label_token_ids

    tokenizer = llama.tiny_tokenizer()
    label_ids = label_token_ids(tokenizer)
    texts = (llama.TEXTS + llama.tricky_texts(40)) * 20

    def engine(**options):
        # Milder weights than 0.25: bf16 rounding in another order must not flip the probabilities.
        return LabelTokenEngine(llama.tiny_model(0, dtype=torch.bfloat16, scale=0.12).cuda(), tokenizer, label_ids,
                                producer="thread", token_budget=2048, **options)

    expected = engine().predict_negative(texts)
    fused_engine = engine(cuda_graphs=cuda_graphs, **FUSED)
    fused_engine.predict_negative(texts)
    got = fused_engine.predict_negative(texts)
    assert expected.max() - expected.min() > 0.1
    np.testing.assert_allclose(got, expected, atol=2e-2)
    if cuda_graphs:
        assert fused_engine.graph_stats()["disabled"] is None and fused_engine.graph_stats()["replays"] > 0
    fused_engine.close()
