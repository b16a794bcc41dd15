"""Every Triton kernel compiles for the GPU (sm_90: H100/H200) down to a cubin, without a GPU.

The interpreter runs kernels as numpy and accepts code the GPU compiler rejects (it let a plain Python
global inside a kernel through), so the real compiler is run ahead of time here: Triton's NVIDIA backend
ships ptxas, and compiling needs no driver. Runs in a subprocess because this test session has
TRITON_INTERPRET=1 set, and the compiler path needs kernels decorated without it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_COMPILE_ALL = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from omni.kernels import decode_attention, int4_matmul, int8_matmul, moe_matmul, rms_norm, rope, silu_gate

def compile_for_sm90(fn, pointers, scalars, consts):
    """pointers: {name: element type}; any other *_ptr takes the activation type; other args are i32."""
    sig = {n: "constexpr" if n in consts else pointers.get(n, ACT) if n.endswith("_ptr") else scalars.get(n, "i32")
           for n in fn.arg_names}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32))

for ACT in ("*bf16", "*fp32"):
    compile_for_sm90(rms_norm._add_rms_norm_kernel, {}, {"eps": "fp32"}, {"HAS_RESIDUAL": True, "BLOCK": 4096})
    compile_for_sm90(rms_norm._add_rms_norm_kernel, {}, {"eps": "fp32"}, {"HAS_RESIDUAL": False, "BLOCK": 128})
    compile_for_sm90(silu_gate._silu_gate_kernel, {}, {}, {"BLOCK": 1024})
    for sink in (True, False):
        for interleaved in (True, False):
            compile_for_sm90(rope._rope_qk_kernel, {"pos_ptr": "*i64", "shift_ptr": "*i64", "inv_freq_ptr": "*fp64"},
                             {}, {"HAS_SINK": sink, "INTERLEAVED": interleaved, "BLOCK_H": 32, "BLOCK_HALF": 64})
    compile_for_sm90(moe_matmul._grouped_matmul_kernel,
                     {"tile_expert_ptr": "*i64", "tile_row_ptr": "*i64", "offsets_ptr": "*i64"}, {},
                     {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "DOT_FP32": False})
    f32 = {"m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32"}
    compile_for_sm90(decode_attention._split_kernel, {"len_ptr": "*i64", "tok_ptr": "*i64", **f32},
                     {"scale": "fp32"}, {"BLOCK_G": 16, "BLOCK_N": 32, "BLOCK_D": 128, "DOT_FP32": False})
    compile_for_sm90(decode_attention._merge_kernel, f32, {}, {"BLOCK_S": 32, "BLOCK_D": 128})
    compile_for_sm90(int8_matmul._int8_matmul_kernel, {"w_ptr": "*i8", "scale_ptr": "*fp32"}, {},
                     {"HAS_BIAS": True, "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 128, "DOT_FP32": False})
    compile_for_sm90(int4_matmul._int4_matmul_kernel, {"w_ptr": "*u8", "scale_ptr": "*bf16", "min_ptr": "*bf16"}, {},
                     {"HAS_BIAS": True, "BLOCK_M": 64, "BLOCK_N": 64, "HALF": 64, "DOT_FP32": False})
print("ok")
'''


@pytest.mark.slow  # ~10 s of CPU for 20 compiles on a cold Triton cache (~/.triton/cache), ~3 s warm
def test_every_kernel_compiles_for_sm90() -> None:
    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("Triton with its NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", _COMPILE_ALL], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
