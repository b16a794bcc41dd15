"""Omni sessions batched in the live runtime: N sessions of the omni engine (Qwen2.5-Omni or Qwen3-Omni) reply at
once, stepped through the device worker the way the session runtime steps them (`DeviceWorker.run_batched`,
streaming/batching.py), with their caches in the engine's pools (`max_sessions=N`: the Thinker's, the Talker's and
Qwen3's code predictor's decode steps batched) or with one pool row (`max_sessions=1`: every step runs alone, the
unbatched path, through the same plumbing). On the tests' tiny random checkpoint of
`--family` (built with transformers, a test-only dependency) or a real one (--model DIR, family from config.json).

    PYTHONPATH=. .venv/bin/python benchmarks/omni_sessions.py --sessions 1,4,8 [--family qwen3] [--model DIR]

Each session has heard 2 s of noise (prefilled while "speaking", untimed), then its turn ends: first audio is
timed from the end of the user's speech (the `end_turn` job, which encodes the last partial block, then
`respond`) to the session's first audio chunk; p50/p95 over all sessions of `--repeats` runs. Throughput: text
tokens and Talker codes of all replies over the wall time until every reply is done (best of the runs), and the
mean number of sessions per Thinker/Talker forward (over the batcher's log: its last 256 iterations). Torch runs
on `--threads` threads (1: the numbers compare steps, not thread scheduling).

A second table times the speech decoder alone: N sessions' streaming token2wav chunks that are due together,
decoded as one batch (`StreamingToken2Wav.decode`: one ragged DiT solve, one vocoder call per input length; what
the engine's pooled sessions do) versus one at a time (the unbatched path), for chunk 1 of every session (steady
state: equal windows) and for a mix of first, later and last chunks (ragged windows). It also prints the max
|batched - alone| sample difference. `--token2wav-only` prints just that table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.tiny_sessions import as_owner, pool_rows
from model.lm.sampling import SamplingConfig
from model.loaders.family import QWEN3_OMNI_MOE, detect_family
from model.loaders.omni import load_thinker
from model.loaders.talker_weights import SpeechModels, load_speech
from model.qwen3.loader import load_qwen3
from model.qwen3.speech import load_qwen3_speech
from model.qwen3.talker import GREEDY
from model.token2wav.solver import SolverConfig
from model.token2wav.streaming import ChunkJob, StreamingSchedule, StreamingToken2Wav
from streaming.batching import ModelReply
from streaming.engine import AudioChunk, ReplyDone
from streaming.engines.omni import OmniEngine, OmniEngineSession
from streaming.worker import DeviceWorker


def heard(engine: OmniEngine, k: int) -> OmniEngineSession:
    """A session that has heard 2 s of noise (its turn not yet ended)."""
    s = engine.open_session()
    pcm = (0.05 * np.random.default_rng(k).standard_normal(32000)).astype(np.float32)
    s.push_audio(pcm, 0.0)
    return s


async def reply(worker: DeviceWorker, s: OmniEngineSession) -> tuple[float, float, float]:
    """(first audio s, text tokens, codes) of one reply, stepped as the runtime steps it."""
    t0 = time.perf_counter()
    await worker.run(s.end_turn)
    it = await worker.run(s.respond)
    assert isinstance(it, ModelReply)
    first = 0.0
    while True:
        ev, _ = await worker.run_batched(it.batcher, it)
        if isinstance(ev, AudioChunk) and len(ev.pcm):
            first = first or time.perf_counter() - t0
        if isinstance(ev, ReplyDone):
            return first, ev.stats["new_tokens"], ev.stats["codes"]
        if ev is None:
            raise RuntimeError("the reply ended without ReplyDone")


async def many(worker: DeviceWorker, engine: OmniEngine, n: int) -> tuple[float, list[float], float, float, float]:
    """(wall s, first-audio s per session, text tokens, codes, mean sessions per batched step) of n replies."""
    sessions = [heard(engine, k) for k in range(n)]
    assert engine.batcher is not None
    engine.batcher.log.clear()
    t0 = time.perf_counter()
    done = await asyncio.gather(*(as_owner(f"s{k}", reply(worker, s)) for k, s in enumerate(sessions)))
    wall = time.perf_counter() - t0
    for s in sessions:
        s.close()
    widths = [len(g) for it in engine.batcher.log for g in it.pool_steps]
    return (wall, [f for f, _, _ in done], sum(t for _, t, _ in done), sum(c for _, _, c in done),
            statistics.mean(widths) if widths else 0.0)


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95))


async def run(args: argparse.Namespace, models: Any) -> None:
    thinker, speech = models
    worker = DeviceWorker()
    worker.start()
    try:
        family = "qwen2.5" if isinstance(speech, SpeechModels) else "qwen3"
        talker = (speech.talker.cfg.sampling(temperature=0.0, max_new_tokens=args.codes) if family == "qwen2.5"
                  else dataclasses.replace(GREEDY, max_new_tokens=args.codes))
        print(f"{'family':>7} {'sessions':>8} {'mode':>9} {'text tok/s':>10} {'codes/s':>8} {'first audio p50':>15} "
              f"{'p95':>8} {'batch':>6}")
        for n in args.sessions:
            for rows, kind in pool_rows(n):
                engine = OmniEngine(
                    None, models=models, sampling=SamplingConfig(temperature=0.0, max_new_tokens=args.tokens),
                    talker_sampling=talker, seed=0,
                    schedule=StreamingSchedule(first_chunk_blocks=1, chunk_blocks=1),
                    solver=SolverConfig(num_steps=args.solver_steps), window=args.window, max_sessions=rows)
                runs = [await many(worker, engine, n) for _ in range(args.repeats)]
                firsts = [f for r in runs for f in r[1]]
                wall, _, tokens, codes, width = min(runs, key=lambda r: r[0])
                print(f"{family:>7} {n:>8} {kind:>9} {tokens / wall:>10.1f} {codes / wall:>8.1f} "
                      f"{statistics.median(firsts) * 1e3:>12.1f} ms {p95(firsts) * 1e3:>5.1f} ms {width:>6.2f}")
    finally:
        worker.stop()


def t2w_jobs(st: StreamingToken2Wav, n: int, mixed: bool) -> list[ChunkJob]:
    """A due chunk for each of n fresh turns (deterministic): chunk 1 of each, or (mixed) first, second and
    last chunks of turns of different lengths in turn."""
    dit = st.model.dit
    jobs = []
    for k in range(n):
        g = torch.Generator().manual_seed(k)
        cond, ref = torch.randn(1, dit.cfg.enc_emb_dim, generator=g), torch.randn(1, 60, dit.cfg.mel_dim, generator=g)
        state = st.init_state(cond, ref, seed=k, max_codes=256)
        kind = k % 3 if mixed else 1
        st.append(state, torch.randint(0, 64, (st.codes_needed(kind) + (5 * k) % 7,), generator=g))
        for _ in range(kind if kind < 2 else 1):  # the chunks before the one timed (untimed)
            job = st.due(state)
            assert job is not None
            st.decode([job])
        job = st.final(state) if kind == 2 else st.due(state)
        assert job is not None
        jobs.append(job)
    return jobs


def t2w_table(args: argparse.Namespace, speech: Any) -> None:
    st = StreamingToken2Wav(speech.token2wav, StreamingSchedule(), SolverConfig(num_steps=args.solver_steps))
    print(f"\ntoken2wav chunks ({args.solver_steps} ODE steps, reference schedule): N sessions' due chunks")
    print(f"{'sessions':>8} {'chunks':>7} {'one at a time':>14} {'batched':>9} {'speed-up':>8} {'max |diff|':>10}")
    for n in args.sessions:
        for mixed in (False, True):
            alone_s, batch_s, err = [], [], 0.0
            for _ in range(args.repeats):
                a, b = t2w_jobs(st, n, mixed), t2w_jobs(st, n, mixed)
                t0 = time.perf_counter()
                one = [st.decode([j])[0] for j in a]
                t1 = time.perf_counter()
                many = st.decode(b)
                t2 = time.perf_counter()
                alone_s.append(t1 - t0)
                batch_s.append(t2 - t1)
                err = max([err] + [float((x.samples - y.samples).abs().max()) for x, y in zip(one, many)])
            al, ba = min(alone_s), min(batch_s)
            print(f"{n:>8} {'mixed' if mixed else 'chunk 1':>7} {al * 1e3:>11.1f} ms {ba * 1e3:>6.1f} ms "
                  f"{al / ba:>7.2f}x {err:>10.2g}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", default="1,4,8", help="numbers of sessions replying at once")
    p.add_argument("--model", help="a Qwen2.5-Omni or Qwen3-Omni checkpoint directory (default: the tests' tiny "
                   "random one of --family)")
    p.add_argument("--family", choices=["qwen2.5", "qwen3"], default="qwen2.5",
                   help="the tiny random checkpoint's family when no --model is given")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=24, help="text tokens per reply (greedy; random weights rarely stop)")
    p.add_argument("--codes", type=int, default=48, help="at most this many Talker codes per reply")
    p.add_argument("--solver-steps", type=int, default=4, help="token2wav ODE steps")
    p.add_argument("--window", type=int, default=4096,
                   help="KV window of the Thinker and Talker caches (the engine's default 4096; the batched step's "
                   "CPU attention reads every slot of a row, the per-session one only the filled ones)")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; throughput: the fastest")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--token2wav-only", action="store_true",
                   help="only the token2wav table (N sessions' chunks batched vs one at a time)")
    args = p.parse_args(argv)
    args.sessions = [int(n) for n in args.sessions.split(",")]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is not None:
            d = Path(args.model)
        elif args.family == "qwen3":
            from tests.model.qwen3_tiny import save_tiny_qwen3

            d = save_tiny_qwen3(Path(tmp) / "qwen3_tiny")[1]
        else:
            from benchmarks.omni_memory import tiny_checkpoint

            d = tiny_checkpoint(Path(tmp))
        models: Any
        if detect_family(d) == QWEN3_OMNI_MOE:
            q = load_qwen3(d, device=args.device)
            models = q, load_qwen3_speech(d, q.model.lm.dtype, args.device, q.index)
        else:
            models = load_thinker(d, device=args.device), load_speech(d, device=args.device)
        if not args.token2wav_only:
            asyncio.run(run(args, models))
        if isinstance(models[1], SpeechModels):  # Qwen2.5-Omni's token2wav (Qwen3's Code2Wav is not batched)
            with torch.inference_mode():
                t2w_table(args, models[1])


if __name__ == "__main__":
    main()
