"""Command-line options shared by the subcommands that load a text LM (chat, bench)."""

from __future__ import annotations

import argparse

import torch

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint directory (config.json + safetensors) or .gguf file; "
                        "default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                   help="weight dtype; auto: the checkpoint's own; for GGUF on CPU, 4-bit projections kept as stored "
                        "with float32 activations")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...; default cpu)")
    p.add_argument("--quant", choices=["int8", "int4"], default=None,
                   help="weight-only quantisation of the projections at load, from a bf16/fp32 checkpoint; "
                        "Qwen3-Omni: also its expert stacks and its Talker (Triton kernels on CUDA; float32 "
                        "reference matmuls elsewhere, slow)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch and the 4-bit kernels (0: torch's default, one per core); on a "
                        "machine where other work holds a core, 1 can be several times faster than 2")


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)


def check_device(name: str) -> None:
    """A ValueError naming --device when torch cannot use it here (was: torch's traceback mid-load)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this torch has no CUDA device to use (torch {torch.__version__}); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")


def dtype_of(args: argparse.Namespace) -> torch.dtype | None:
    return DTYPES[args.dtype]
