"""Qwen3-Omni Thinker speed through its session: checkpoint load time, text prefill tokens/s, a 10-s audio turn
(mel + AuT + prefill) and greedy decode tokens/s, on a checkpoint directory or on the tests' tiny random one.

    .venv/bin/python benchmarks/qwen3_thinker.py                      # builds the tiny checkpoint (needs transformers)
    .venv/bin/python benchmarks/qwen3_thinker.py --model DIR --device cuda --dtype bfloat16

Each line is one timed run after an untimed warm-up load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.model.lm.sampling import SamplingConfig
from omni.model.qwen3.loader import load_qwen3
from omni.model.qwen3.session import Qwen3ThinkerSession

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def measure(directory: Path, device: str, dtype: torch.dtype | None, tokens: int) -> None:
    load_qwen3(directory, dtype, device)  # warm the file cache
    q = load_qwen3(directory, dtype, device)
    print(f"load: {q.load_seconds:.3f} s ({directory})")
    s = Qwen3ThinkerSession(q.model, q.prompt, tokenizer=q.tokenizer)
    text = "The quick brown fox jumps over the lazy dog. " * 200
    ids = q.prompt.text(text)[:tokens]
    s.start_user_turn()
    t = time.perf_counter()
    s.feed_ids(ids)
    dt = time.perf_counter() - t
    print(f"text prefill: {len(ids)} tokens in {dt:.3f} s = {len(ids) / dt:.0f} tok/s")
    pcm = torch.randn(16000 * 10, generator=torch.Generator().manual_seed(0)) * 0.1
    t = time.perf_counter()
    n = s.add_audio(pcm)
    print(f"audio turn, 10 s: {n} tokens (mel + AuT + prefill) in {time.perf_counter() - t:.3f} s")
    s.end_user_turn()
    t = time.perf_counter()
    out = list(s.generate(SamplingConfig(max_new_tokens=64), frozenset()))
    dt = time.perf_counter() - t
    print(f"greedy decode: {len(out)} tokens in {dt:.3f} s = {len(out) / dt:.1f} tok/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="Qwen3-Omni checkpoint directory (default: the tiny test one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the checkpoint's")
    p.add_argument("--tokens", type=int, default=900, help="text prompt length for the prefill measurement")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype] if args.dtype else None
    if args.model is not None:
        measure(Path(args.model), args.device, dtype, args.tokens)
        return
    from tests.model.qwen3_tiny import save_tiny_qwen3

    with tempfile.TemporaryDirectory() as tmp:
        measure(save_tiny_qwen3(Path(tmp) / "qwen3_tiny")[1], args.device, dtype, args.tokens)


if __name__ == "__main__":
    main()
