"""Omni sessions batched in the live runtime: N sessions of the omni engine (Qwen2.5-Omni or Qwen3-Omni) reply at
once, stepped through the device worker the way the session runtime steps them (`DeviceWorker.run_batched`,
omni/streaming/batching.py), with their caches in the engine's pools (`max_sessions=N`: the Thinker's, the Talker's and
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

A second table times the speech decoder alone: N sessions' streaming chunks that are due together, decoded as
one batch (what the engine's pooled sessions do) versus one at a time (the unbatched path). Qwen2.5-Omni's
token2wav (`StreamingToken2Wav.decode`: one ragged DiT solve, one vocoder call per input length): chunk 1 of every
session (steady: equal windows) and a mix of first, later and last chunks (ragged windows). Qwen3-Omni's Code2Wav
(`StreamingCode2Wav.decode`: one `Code2Wav.step_rows` call over right-padded rows): the next 1-frame chunk of
streams whose KV window is full (steady, the engine's chunk size) and a mix of first chunks (1 frame), chunks of 2
frames with the window partly full and last chunks of 3. It also prints the max |batched - alone| sample
difference. `--token2wav-only` prints just that table (for either family); `--code2wav-preset qwen3-omni-30b-a3b`
times Code2Wav on random weights of the released shape instead.

    PYTHONPATH=. .venv/bin/python benchmarks/omni_sessions.py --family qwen3 --token2wav-only --sessions 1,2,4,8
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.code2wav import build
from benchmarks.tiny_sessions import as_owner, pool_rows
from omni.model.code2wav import Code2WavStreamState, StreamingCode2Wav
from omni.model.code2wav.config import PRESETS
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders.family import QWEN3_OMNI_MOE, detect_family
from omni.model.loaders.omni import load_thinker
from omni.model.loaders.talker_weights import SpeechModels, load_speech
from omni.model.qwen3.loader import load_qwen3
from omni.model.qwen3.speech import load_qwen3_speech
from omni.model.qwen3.talker import GREEDY
from omni.model.token2wav.solver import SolverConfig
from omni.model.token2wav.streaming import ChunkJob, StreamingSchedule, StreamingToken2Wav
from omni.streaming.batching import ModelReply
from omni.streaming.engine import AudioChunk, ReplyDone
from omni.streaming.engines.omni import OmniEngine, OmniEngineSession
from omni.streaming.worker import DeviceWorker


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


def chunk_table(args: argparse.Namespace, title: str,
                jobs: Callable[[int, bool], list[Any]], decode: Callable[[list[Any]], list[torch.Tensor]]) -> None:
    """N sessions' due speech chunks decoded one at a time vs as one batch: `jobs(n, mixed)` makes n fresh due
    chunks (deterministic, so two calls give the same), `decode(jobs)` their samples (one job: the unbatched path)."""
    print(f"\n{title}")
    print(f"{'sessions':>8} {'chunks':>7} {'one at a time':>14} {'batched':>9} {'speed-up':>8} {'max |diff|':>10}")
    for n in args.sessions:
        for mixed in (False, True):
            alone_s, batch_s, err = [], [], 0.0
            for _ in range(args.repeats):
                a, b = jobs(n, mixed), jobs(n, mixed)
                t0 = time.perf_counter()
                one = [decode([j])[0] for j in a]
                t1 = time.perf_counter()
                many = decode(b)
                t2 = time.perf_counter()
                alone_s.append(t1 - t0)
                batch_s.append(t2 - t1)
                err = max([err] + [float((x - y).abs().max()) for x, y in zip(one, many, strict=True)])
            al, ba = min(alone_s), min(batch_s)
            print(f"{n:>8} {'mixed' if mixed else 'steady':>7} {al * 1e3:>11.1f} ms {ba * 1e3:>6.1f} ms "
                  f"{al / ba:>7.2f}x {err:>10.2g}")


def t2w_table(args: argparse.Namespace, speech: Any) -> None:
    st = StreamingToken2Wav(speech.token2wav, StreamingSchedule(), SolverConfig(num_steps=args.solver_steps))
    chunk_table(args, f"token2wav chunks ({args.solver_steps} ODE steps, reference schedule): N sessions' due chunks "
                "(steady: chunk 1 of each)", lambda n, mixed: t2w_jobs(st, n, mixed),
                lambda jobs: [c.samples for c in st.decode(jobs)])


def c2w_jobs(st: StreamingCode2Wav, n: int, mixed: bool) -> list[Code2WavStreamState]:
    """n streams with a chunk due (deterministic): each after 80 frames decoded (the KV window full, every conv
    primed) with the next frame buffered, the engine's 1-frame chunks; or (mixed) in turn a first chunk of 1 frame,
    a chunk of 2 after 20 frames (the window partly full) and a last chunk of 3 after 80 frames."""
    cfg = st.model.cfg
    out = []
    for k in range(n):
        g = torch.Generator().manual_seed(k)
        past, size = [(0, 1), (20, 2), (80, 3)][k % 3] if mixed else (80, 1)
        state = st.init_state()
        if past:  # untimed
            st.push(state, torch.randint(0, cfg.codebook_size, (cfg.num_quantizers, past), generator=g))
            st.decode([state])
        st.push(state, torch.randint(0, cfg.codebook_size, (cfg.num_quantizers, size), generator=g))
        if mixed and k % 3 == 2:
            st.finish(state)
        out.append(state)
    return out


def c2w_table(args: argparse.Namespace, speech: Any) -> None:
    model, shape = speech.code2wav, "the checkpoint's"
    if args.code2wav_preset:  # random weights of a released shape instead of the checkpoint's Code2Wav
        model, shape = build(args.code2wav_preset, args.device, torch.float32), args.code2wav_preset
    st = StreamingCode2Wav(model)
    made: dict[tuple[int, bool], list[Code2WavStreamState]] = {}  # the streams' pasts decoded once (untimed)

    def jobs(n: int, mixed: bool) -> list[Code2WavStreamState]:
        if (n, mixed) not in made:
            made[n, mixed] = c2w_jobs(st, n, mixed)
        return copy.deepcopy(made[n, mixed])

    chunk_table(args, f"Code2Wav chunks ({shape} shape): N sessions' due chunks (steady: 1 frame each, window full)",
                jobs, lambda jobs: [torch.cat([c.samples for c in chunks]) for chunks in st.decode(jobs)])


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
    p.add_argument("--code2wav-preset", choices=sorted(PRESETS),
                   help="Qwen3: time the Code2Wav table on random weights of this released shape instead of the "
                   "checkpoint's Code2Wav")
    p.add_argument("--token2wav-only", action="store_true",
                   help="only the speech decoder's table (N sessions' token2wav or, for Qwen3, Code2Wav chunks batched "
                   "vs one at a time)")
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
        with torch.inference_mode():  # the speech decoder: Qwen2.5-Omni's token2wav, Qwen3-Omni's Code2Wav
            (t2w_table if isinstance(models[1], SpeechModels) else c2w_table)(args, models[1])


if __name__ == "__main__":
    main()
