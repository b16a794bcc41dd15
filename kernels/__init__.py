"""Triton kernels, each with an eager PyTorch reference and a CPU fallback."""
