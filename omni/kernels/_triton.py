"""Triton, when it can be imported; every GPU kernel module defines its kernels only if it can.

Production code never needs Triton on a CPU-only machine: each op's dispatch function runs its Triton
launcher only for CUDA tensors and only when Triton imported, and its eager reference otherwise. Tests
run the launchers on CPU tensors under TRITON_INTERPRET=1, set by tests/kernels/conftest.py before triton
is first imported: `@triton.jit` reads the variable when it decorates, and triton.language decorates its own
helpers (tl.sum, tl.max, ...) at import, so setting it later breaks every kernel that reduces.
"""

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the references do the work
    triton = None
    tl = None

TRITON_AVAILABLE = triton is not None


def interpreting() -> bool:
    """Whether kernels defined now run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(x: torch.Tensor) -> bool:
    """The dispatch rule shared by every op: Triton for CUDA tensors when it is installed."""
    return TRITON_AVAILABLE and x.is_cuda


def require_triton(op: str) -> None:
    if not TRITON_AVAILABLE:
        raise RuntimeError(f"{op}: Triton is not installed; call the dispatch function, which falls back "
                           "to the eager reference")


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (tl.arange needs power-of-two extents)."""
    return 1 << max(0, n - 1).bit_length()


if triton is not None:

    @triton.jit
    def round_to(x, dtype: tl.constexpr):
        """float32 x -> dtype, rounding to nearest even.

        Written out for bfloat16 because Triton 3.9's interpreter truncates a plain float32 -> bfloat16
        cast (a one-unit bias in the last place that the GPU's cvt.rn does not have); the explicit
        rounding costs a few integer ops on the GPU and makes interpreted and native results agree."""
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits += 0x7FFF + ((bits >> 16) & 1)
            return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return x.to(dtype)

    @triton.jit
    def dot(a, b, IN_FP32: tl.constexpr):
        """tl.dot with a float32 accumulator; IN_FP32 (pass `interpreting()`) upcasts the operands first.

        Triton 3.9's interpreter multiplies bfloat16 operands as their raw 16-bit integers, so under the
        interpreter the operands go in as float32: bf16 x bf16 products are exact in float32, so this is the
        same arithmetic as the GPU's bf16 dot with float32 accumulation, up to summation order."""
        if IN_FP32:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision="ieee")

else:  # never called without Triton: every dispatch takes its reference
    round_to = None
    dot = None
