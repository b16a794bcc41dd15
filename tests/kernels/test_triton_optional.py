"""Triton is optional: without it every kernel module imports, and every dispatch runs its eager reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from omni.kernels import decode_attention, int4_matmul, int8_matmul, rms_norm, rope, silu_gate

ROOT = Path(__file__).resolve().parents[2]

_WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError, as on a CPU-only install
import torch
from omni.kernels._triton import TRITON_AVAILABLE
from omni.kernels.decode_attention import decode_attention
from omni.kernels.int4_matmul import int4_matmul, quantize_int4
from omni.kernels.int8_matmul import int8_matmul, quantize_int8
from omni.kernels.rms_norm import add_rms_norm
from omni.kernels.rope import rope_qk_
from omni.kernels.silu_gate import silu_gate
assert not TRITON_AVAILABLE
x = torch.randn(2, 64)
add_rms_norm(x, x, torch.ones(64), 1e-6)
silu_gate(x)
int8_matmul(x, *quantize_int8(torch.randn(5, 64)))
int4_matmul(x, *quantize_int4(torch.randn(5, 64), 32), 32)
q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 2, 8)
rope_qk_(q, k, torch.arange(2)[None], torch.rand(4).double())
decode_attention(torch.randn(1, 4, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.tensor([3]),
                 torch.tensor([0, 1, 2, -1, -1, -1]), 1, 4)
print("ok")
"""


def test_every_op_runs_without_triton() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TRITON], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_dispatch_picks_the_reference_for_cpu_tensors() -> None:
    """Even with Triton installed and the interpreter on, CPU tensors in production code go to the references
    (the interpreter is for tests only); checked through a launcher that must not be reached."""
    calls = []
    modules = (rms_norm, silu_gate, rope, decode_attention, int8_matmul, int4_matmul)
    names = ("add_rms_norm_triton", "silu_gate_triton", "rope_qk_triton_", "decode_attention_triton",
             "int8_matmul_triton", "int4_matmul_triton")
    saved = [getattr(m, n) for m, n in zip(modules, names)]
    try:
        for m, n in zip(modules, names):
            setattr(m, n, lambda *a, _n=n, **k: calls.append(_n))
        x = torch.randn(2, 64)
        rms_norm.add_rms_norm(x, x, torch.ones(64), 1e-6)
        silu_gate.silu_gate(x)
        int8_matmul.int8_matmul(x, *int8_matmul.quantize_int8(torch.randn(5, 64)))
        int4_matmul.int4_matmul(x, *int4_matmul.quantize_int4(torch.randn(5, 64), 32), 32)
    finally:
        for m, n, f in zip(modules, names, saved):
            setattr(m, n, f)
    assert calls == []
