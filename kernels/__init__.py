"""Kernels, each with an eager PyTorch reference beside it.

cpu/: C kernels for batch-1 decoding of 4-bit models on the CPU (built on first use with the system
compiler, loaded with ctypes; torch paths take over where they cannot be built): q4_matmul, q8_matmul,
decode_step.
"""
