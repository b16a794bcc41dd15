"""Decode speed of the embedded model against llama.cpp on the same GGUF file, same machine, same tokens.

    .venv/bin/python benchmarks/llama_cpp_compare.py [--threads 1 2] [--repeats 7] [--steps 16]

For each thread count and each context (a short chat prompt, 1,000 and 2,000 tokens), times `--steps`
one-token decode steps (logits of the whole vocabulary each step, as generation needs) of:
  omni f32  - the fused C step with a float32 KV cache (the previous default)
  omni f16  - the same with a float16 cache (the default now)
  llama.cpp - through llama-cpp-python, when installed (optional, not a project dependency:
              CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python), its default float16 cache
Runs are interleaved (every engine once per round, the order rotating) and each engine's cache is rolled
back after its steps, so all see the same context; the table shows the median over --repeats rounds and
the 1-minute load average before and after (the machine is shared: compare columns, not days).
Also prints, once, how far the float16 cache moves the logits from the float32 one at the longest context.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.model.embedded.packaged import default_model_path
from omni.model.lm.decoder import DecoderLM, DecoderState
from omni.model.lm.kv_cache import CacheConfig
from omni.model.loaders import load_lm

CONTEXTS = {"short": 0, "1k": 1000, "2k": 2000}  # "short": the chat prompt alone
WINDOW = 2044  # the embedded engine's window: sinks + window = 2,048 slots, llama.cpp's n_ctx below


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def long_text_ids(lm: object, n: int) -> list[int]:
    """n tokens of a plausible multi-turn chat (repeated turns), ending in a user question."""
    tok = lm.tokenizer  # type: ignore[attr-defined]
    turns = []
    for i in range(80):
        turns += [{"role": "user", "content": f"Question {i}: why does copper conduct electricity so well?"},
                  {"role": "assistant", "content": "Copper has one loosely bound outer electron per atom, and "
                   "those electrons move freely through the metal lattice, carrying charge with little "
                   f"resistance. That is answer number {i}."}]
    ids: list[int] = tok.encode(tok.render_chat(turns))
    if len(ids) < n:
        raise SystemExit(f"the synthetic chat has only {len(ids)} tokens, {n} needed")
    return ids[:n]


class Omni:
    """One session per context with a given cache dtype; steps roll back after each timing."""

    def __init__(self, model: DecoderLM, dtype: torch.dtype, prompts: dict[str, list[int]],
                 like: Omni | None = None) -> None:
        """Prefill each prompt, or (to save minutes of prefill) copy `like`'s caches, rounded to dtype."""
        self.model, self.states = model, {}
        for name, ids in prompts.items():
            state = model.init_state(CacheConfig(sinks=4, window=WINDOW, chunk=256, dtype=dtype))
            if like is None:
                model(state, input_ids=torch.tensor([ids]), logits="none")
            else:
                other = like.states[name]
                for dst, src in ((state.cache.k, other.cache.k), (state.cache.v, other.cache.v),
                                 (state.cache.slot_token, other.cache.slot_token),
                                 (state.cache.slot_pos, other.cache.slot_pos)):
                    dst.copy_(src)
                state.cache.length, state.next_position = other.cache.length, other.next_position
            self.states[name] = state

    def steps(self, context: str, n: int) -> float:
        state: DecoderState = self.states[context]
        length, position = state.cache.length, state.next_position
        token = torch.tensor([[300]])
        t0 = time.perf_counter()
        for _ in range(n):
            self.model(state, input_ids=token)
        elapsed = time.perf_counter() - t0
        state.cache.truncate(length)  # exact: n <= chunk tokens dropped, and the cache has not wrapped
        state.next_position = position
        return elapsed / n


class LlamaCpp:
    def __init__(self, prompts: dict[str, list[int]]) -> None:
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(str(default_model_path()), n_ctx=WINDOW + 4 + 256, n_threads=1, n_batch=512,
                                   verbose=False)
        self.prompts = prompts
        self.context: str | None = None

    def threads(self, n: int) -> None:
        self.llama_cpp.llama_set_n_threads(self.llm.ctx, n, n)

    def steps(self, context: str, n: int) -> float:
        if context != self.context:  # one llama context: re-prefill when the context changes
            self.llm.reset()
            self.llm.eval(self.prompts[context])
            self.context = context
        base = self.llm.n_tokens
        t0 = time.perf_counter()
        for _ in range(n):
            self.llm.eval([300])
        elapsed = time.perf_counter() - t0
        self.llm._ctx.kv_cache_seq_rm(-1, base, -1)
        self.llm.n_tokens = base
        return elapsed / n


def accuracy(model: DecoderLM, ids: list[int], steps: int = 16) -> str:
    """Greedy continuation after `ids` with a float32 and a float16 cache: equal tokens? logit error?"""
    runs = []
    for dtype in (torch.float32, torch.float16):
        state = model.init_state(CacheConfig(sinks=4, window=WINDOW, chunk=256, dtype=dtype))
        logits = model(state, input_ids=torch.tensor([ids])).logits
        out = []
        for _ in range(steps):
            assert logits is not None
            out.append(logits[0])
            logits = model(state, input_ids=logits.argmax(-1, keepdim=True)).logits
        runs.append(torch.stack(out))
    a, b = runs
    rel = float(((b - a).abs().amax(-1) / a.abs().amax(-1)).max())
    same = bool(torch.equal(a.argmax(-1), b.argmax(-1)))
    return f"after {len(ids)} tokens, {steps} greedy steps: tokens equal {same}, max |dlogit| / max|logit| {rel:.1e}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--no-accuracy", action="store_true", help="skip the float16-vs-float32 check (2 prefills)")
    args = p.parse_args()
    lm = load_lm()
    model = lm.model
    if model._fused is None:
        print("the C kernels are not available here: nothing to compare (see the log)")
        return 1
    chat = lm.tokenizer.encode(lm.tokenizer.render_chat([{"role": "user", "content": "Tell me a story."}]))
    long_ids = long_text_ids(lm, max(CONTEXTS.values()))
    prompts = {name: (chat if n == 0 else long_ids[:n]) for name, n in CONTEXTS.items()}
    print(f"model {default_model_path().name}; contexts {[len(v) for v in prompts.values()]} tokens; "
          f"{args.steps} steps per timing, median of {args.repeats} interleaved rounds; load {load()}")
    if not args.no_accuracy:
        print(accuracy(model, long_ids))
    engines: dict[str, Callable[[str, int], float]] = {}
    f32 = Omni(model, torch.float32, prompts)
    engines["omni f32"] = f32.steps
    engines["omni f16"] = Omni(model, torch.float16, prompts, like=f32).steps
    llama = None
    try:
        llama = LlamaCpp(prompts)
        engines["llama.cpp"] = llama.steps
    except ImportError:
        print("llama-cpp-python is not installed: omni only")
    print(f"{'threads':>7} {'context':>7} " + " ".join(f"{e + ' tok/s':>15}" for e in engines) +
          ("  f16 / llama.cpp" if llama else "") + "  load before/after")
    for threads in args.threads:
        torch.set_num_threads(threads)
        if llama:
            llama.threads(threads)
        for context in CONTEXTS:
            before = load()
            times: dict[str, list[float]] = {e: [] for e in engines}
            names = list(engines)
            for r in range(args.repeats + 1):  # round 0 warms up
                for e in names[r % len(names):] + names[: r % len(names)]:
                    t = engines[e](context, args.steps)
                    if r:
                        times[e].append(t)
            rate = {e: 1 / statistics.median(ts) for e, ts in times.items()}
            ratio = f"  {rate['omni f16'] / rate['llama.cpp']:15.2f}x" if llama else ""
            print(f"{threads:>7} {context:>7} " + " ".join(f"{rate[e]:15.1f}" for e in engines) + ratio +
                  f"  {before}/{load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
