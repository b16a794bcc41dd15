"""Kernels, each with an eager PyTorch reference beside it.

cpu/: C kernels for batch-1 decoding of 4-bit models on the CPU (built on first use with the system
compiler, loaded with ctypes; torch paths take over where they cannot be built): q4_matmul, q8_matmul,
decode_step.

GPU (Triton), one op per file, each with `*_reference`, `*_triton` and a dispatch that runs Triton on CUDA
tensors when triton imports and the reference otherwise: rms_norm (fused residual add), rope (q and k in
place, three-section M-RoPE, shifted sink queries), decode_attention (sink + ring cache, GQA, split-K),
silu_gate, int8_matmul (per-channel weight-only), int4_matmul (per-group weight-only). `_triton` holds the
optional import. Tests run them on the CPU under TRITON_INTERPRET=1 (tests/kernels/conftest.py).
"""
