"""The float8 activation quantizers: the torch reference on hand-computed rows, the Triton kernels against it
(under Triton's interpreter on CPU, with float32 outputs so that the values before the cast are compared, and on a
GPU with the real float8 outputs), and the projection fed a quantized activation."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from screener.classifiers.gpu import fp8  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def triton_present() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def test_quantize_rows_scales_each_row_to_the_largest_float8_value():
    got = fp8.quantize_rows(torch.tensor([[1.0, -2.0, 4.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(got.scale, torch.tensor([[4 / 448], [1e-12 / 448]]))
    assert got.q.dtype == torch.float8_e4m3fn and got.dtype == torch.float32
    assert got.q.float().tolist() == [[112.0, -224.0, 448.0], [0.0, 0.0, 0.0]]


def test_rms_norm_quantize_normalises_then_quantizes():
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=torch.bfloat16)  # rms 1
    got = fp8.rms_norm_quantize(x, torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.bfloat16), 0.0)
    torch.testing.assert_close(got.scale, torch.tensor([[2 / 448]]))
    assert got.q.float().tolist() == [[224.0, -448.0, 112.0, -224.0]] and got.dtype == torch.bfloat16


def test_silu_mul_quantize_takes_gate_then_up():
    got = fp8.silu_mul_quantize(torch.tensor([[[0.0, 2.0, 3.0, -1.0]]]))  # gate (0, 2), up (3, -1)
    silu2 = 2 / (1 + math.exp(-2))
    assert got.shape == (1, 1, 2) and got.scale.shape == (1, 1, 1)
    torch.testing.assert_close(got.scale, torch.tensor([[[silu2 / 448]]]))
    assert got.q.float().tolist() == [[[0.0, -448.0]]]


def test_a_projection_of_a_quantized_activation_equals_one_of_the_activation():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 5, 32), torch.randn(48, 32) * 0.1, torch.randn(48)
    weight = fp8.to_fp8(w)
    quantized = fp8.quantize_rows(x)
    torch.testing.assert_close(weight.linear(quantized, b, slice(16, None)), weight.linear(x, b, slice(16, None)),
                               atol=0, rtol=0)
    # Rows gathered from the quantized form are the rows of the gathered activation, quantized.
    index = (torch.tensor([0, 2]), torch.tensor([4, 1]))
    torch.testing.assert_close(weight.linear(quantized[index], b), weight.linear(x[index], b), atol=0, rtol=0)


INTERPRETED = textwrap.dedent("""
    import torch
    from screener.classifiers.gpu import fp8, fp8_kernels

    torch.manual_seed(0)
    x = (torch.randn(6, 80) * 3).to(torch.bfloat16)[:, :48]  # rows 80 apart: the kernels take strided rows
    x[2] = 0
    w = torch.randn(48).to(torch.bfloat16)
    gate_up = torch.randn(5, 96).to(torch.bfloat16)
    cases = [(fp8_kernels.quantize_rows, x, (), fp8.quantize_rows_reference(x)),
             (fp8_kernels.rms_norm_quantize, x, (w, 1e-5), fp8.rms_norm_quantize_reference(x, w, 1e-5)),
             (fp8_kernels.silu_mul_quantize, gate_up, (), fp8.silu_mul_quantize_reference(gate_up))]
    for kernel, rows, extra, ref in cases:
        # float32 outputs: the values the kernel casts, compared after the same cast in torch.
        q = torch.empty(rows.shape[0], 48)
        scale = torch.empty(rows.shape[0], 1)
        kernel(rows, q, scale, *extra)
        torch.testing.assert_close(scale, ref.scale, rtol=1e-6, atol=0)
        assert torch.equal(q.to(torch.float8_e4m3fn).float(), ref.q.float()), kernel
    print("ok")
""")


@pytest.mark.skipif(not triton_present(), reason="needs Triton")
def test_triton_kernels_compute_the_reference_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@cuda
@pytest.mark.skipif(not triton_present(), reason="needs Triton")
def test_triton_kernels_match_the_reference_on_cuda():
    assert fp8.triton_kernels() is not None
    torch.manual_seed(0)
    x = (torch.randn(300, 4096 + 512, device="cuda") * 3).to(torch.bfloat16)[:, :4096]
    w = torch.randn(4096, device="cuda").to(torch.bfloat16)
    gate_up = torch.randn(300, 2 * 1536, device="cuda").to(torch.bfloat16)
    for got, ref in ((fp8.quantize_rows(x), fp8.quantize_rows_reference(x)),
                     (fp8.rms_norm_quantize(x, w, 1e-5), fp8.rms_norm_quantize_reference(x, w, 1e-5)),
                     (fp8.silu_mul_quantize(gate_up), fp8.silu_mul_quantize_reference(gate_up))):
        assert got.q.dtype == torch.float8_e4m3fn and got.q.shape == ref.q.shape and got.dtype == torch.bfloat16
        torch.testing.assert_close(got.scale, ref.scale, rtol=1e-5, atol=0)
        # Division and exp round differently in the kernel: a value may land one float8 step away, rarely.
        codes = (got.q.view(torch.uint8).int() - ref.q.view(torch.uint8).int()).abs()
        assert codes.max() <= 1 and (codes > 0).float().mean() < 0.01
