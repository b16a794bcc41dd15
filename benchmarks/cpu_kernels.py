"""CPU kernel speed on the embedded model's shapes (SmolLM2-135M: 30 layers, hidden 576, MLP 1536, 9 + 2x3 heads
of 64, vocabulary 49,152), per torch thread count: all 120 projections of one token (decode) and per token of
a 17- and 48-token prefill, the Q8_0 head, and whole decode steps of the real model (fused C step + head),
also after 1,000 and 2,000 tokens of context (benchmarks/llama_cpp_compare.py sets those against llama.cpp).

    .venv/bin/python benchmarks/cpu_kernels.py [--threads 1 2] [--repeats 5]

Prints the best of --repeats runs per line (the machine is shared: the best run is the least disturbed one).
Weights are random except for the whole-model line, which loads the embedded GGUF.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.kernels.cpu import library
from omni.kernels.q4_matmul import pack_q4_1, q4_1_matmul
from omni.kernels.q8_matmul import pack_q8_0, q8_0_matmul
from omni.model.lm.decoder import DecoderState, default_cache_config

LAYERS, C, INTER, QKV, VOCAB = 30, 576, 1536, 576 + 2 * 192, 49152


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    lib = library()
    if lib is None:
        print("the C kernels could not be built here (see the log); nothing to measure")
        return 1
    print(f"library: {lib.path} (AVX2 path: {lib.simd})")
    g = torch.Generator().manual_seed(0)
    shapes = [(QKV, C), (C, C), (2 * INTER, C), (C, INTER)]
    weights = []
    for N, K in shapes:
        q = torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=g)
        weights.append((pack_q4_1(q, torch.rand(N, K // 32, generator=g), torch.rand(N, K // 32, generator=g)), K))
    head = pack_q8_0(torch.randn(VOCAB, C, generator=g))
    mb = LAYERS * sum(b.numel() for b, _ in weights) / 1e6

    from omni.model.loaders import load_lm

    lm = load_lm()
    model = lm.model
    prompt = lm.tokenizer.render_chat([{"role": "user", "content": "Tell me a story."}])
    ids = torch.tensor([lm.tokenizer.encode(prompt)])

    for threads in args.threads:
        torch.set_num_threads(threads)
        for T in (1, 17, 48):
            xs = {K: torch.randn(T, K, generator=g) for K in (C, INTER)}

            def projections(xs: dict[int, torch.Tensor] = xs) -> None:
                for _ in range(LAYERS):
                    for blocks, K in weights:
                        q4_1_matmul(lib, blocks, K, xs[K])

            s = best_of(args.repeats, projections)
            extra = f", {mb / s / 1e3:.1f} GB/s of weights" if T == 1 else ""
            print(f"threads {threads}: 120 projections, {T:>2} token(s): {s * 1e3:7.2f} ms "
                  f"({s * 1e3 / T:.2f} ms/token{extra})")
        x1 = torch.randn(1, C, generator=g)
        s = best_of(args.repeats, lambda x1=x1: q8_0_matmul(lib, head, C, x1))
        print(f"threads {threads}: Q8_0 head {VOCAB}x{C}, 1 token: {s * 1e3:.2f} ms "
              f"({head.numel() / s / 1e9:.1f} GB/s)")

        def decode(n: int = 32) -> float:
            state = model.init_state()
            logits = model(state, input_ids=ids).logits
            t0 = time.perf_counter()
            for _ in range(n):
                assert logits is not None
                logits = model(state, input_ids=logits.argmax(-1, keepdim=True)).logits
            return (time.perf_counter() - t0) / n

        steps = [decode() for _ in range(args.repeats)]
        print(f"threads {threads}: embedded model, one decode step (fused layers + head): "
              f"{min(steps) * 1e3:.2f} ms = {1 / min(steps):.1f} tok/s")
        for context in (1000, 2000):  # the cache read per step (float16 by default) grows with the context
            state = model.init_state(default_cache_config(model.cfg, window=2044))
            model(state, input_ids=torch.randint(100, 40000, (1, context), generator=g))
            token = torch.tensor([[300]])

            def step(state: DecoderState = state, token: torch.Tensor = token) -> None:
                model(state, input_ids=token)

            s = best_of(args.repeats, step)
            print(f"threads {threads}: embedded model, one decode step after {context} tokens of context: "
                  f"{s * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
