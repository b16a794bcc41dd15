"""Streaming token2wav chunk: eager vs `torch.compile` (OMNI_TOKEN2WAV_COMPILE, omni/model/token2wav/streaming.py).

    .venv/bin/python benchmarks/token2wav_compile.py                        # tiny shapes (the speech tests')
    .venv/bin/python benchmarks/token2wav_compile.py --preset mid           # 7B DiT width, 4 layers; BigVGAN 1/4
    .venv/bin/python benchmarks/token2wav_compile.py --preset 7b --device cuda

Random weights. One turn of --codes random codes is decoded chunk by chunk (the engine's schedule) eagerly, then
by a compiled streamer: compile seconds (`warm_up`: first, steady and last chunk shapes, plus --batch turns
together), then the same turn once (it may still compile a shape the warm-up missed), then --repeats turns of each
path, interleaved (the machine's load falls on both alike). Prints, per path, the first chunk and the later chunks
(ms, medians), and how far the compiled audio is from the eager audio (max |difference|, SNR). Asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.model.token2wav import Token2Wav, Token2WavConfig
from omni.model.token2wav.solver import SolverConfig
from omni.model.token2wav.streaming import StreamingToken2Wav


def config(preset: str) -> Token2WavConfig:
    if preset == "tiny":
        from benchmarks.talker import tiny_configs

        return tiny_configs()[1]
    cfg = Token2WavConfig()
    if preset == "mid":  # the 7B DiT's width with 4 of its 22 layers, BigVGAN at a quarter of its channels
        dit = replace(cfg.dit, num_layers=4, look_ahead_layers=(2,), look_backward_layers=(0, 3))
        return Token2WavConfig(dit=dit, bigvgan=replace(cfg.bigvgan, upsample_initial_channel=384))
    return cfg


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def turn(streamer: StreamingToken2Wav, codes: list[int], dev: torch.device) -> tuple[list[float], torch.Tensor]:
    """Chunk times (ms) and the turn's audio."""
    dcfg = streamer.model.cfg.dit
    g = torch.Generator().manual_seed(7)
    state = streamer.init_state(torch.randn(1, dcfg.enc_emb_dim, generator=g).to(dev),
                                (torch.randn(1, 300, dcfg.mel_dim, generator=g) - 5).to(dev), seed=0,
                                max_codes=len(codes))
    times, pcm = [], []
    step = streamer.schedule.chunk_blocks * streamer.block // streamer.repeats
    for i in range(0, len(codes), step):
        streamer.append(state, codes[i : i + step])
        while (job := streamer.due(state)) is not None:
            sync(dev)
            t0 = time.perf_counter()
            pcm += [c.samples for c in streamer.decode([job])]
            sync(dev)
            times.append((time.perf_counter() - t0) * 1e3)
    job = streamer.final(state)
    if job is not None:
        pcm += [c.samples for c in streamer.decode([job])]
    return times, torch.cat(pcm).cpu()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("tiny", "mid", "7b"), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--codes", type=int, default=120, help="codes in the turn (50 per second of speech)")
    p.add_argument("--steps", type=int, default=10, help="ODE time points (10: the reference, 36 DiT calls)")
    p.add_argument("--batch", type=int, default=1, help="turns decoded together in the compile warm-up")
    p.add_argument("--repeats", type=int, default=3, help="timed turns per path, interleaved")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    with torch.device(dev):
        model = Token2Wav(config(args.preset)).eval()
    codes = torch.randint(0, model.cfg.dit.num_embeds, (args.codes,), generator=torch.Generator().manual_seed(1))
    solver = SolverConfig(num_steps=args.steps)
    ids = codes.tolist()
    with torch.inference_mode():
        eager = StreamingToken2Wav(model, solver=solver, compiled=False)
        turn(eager, ids[: 3 * 24], dev)  # warm-up (allocator, first-call costs)
        compiled = StreamingToken2Wav(model, solver=solver, compiled=True)
        compile_s = compiled.warm_up(args.batch)
        first_turn = sum(turn(compiled, ids, dev)[0])  # any shape the warm-up missed compiles here
        e_times, c_times = [], []
        for _ in range(args.repeats):  # interleaved: a busy machine's load falls on both paths alike
            t, e_pcm = turn(eager, ids, dev)
            e_times.append(t)
            t, c_pcm = turn(compiled, ids, dev)
            c_times.append(t)
    err = (c_pcm - e_pcm).abs().max().item()
    snr = 10 * math.log10(e_pcm.pow(2).mean().item() / max((c_pcm - e_pcm).pow(2).mean().item(), 1e-30))
    print(f"token2wav {args.preset} on {dev} ({torch.get_num_threads()} threads), {args.codes} codes, "
          f"{len(e_times[0])} chunks, {solver.evaluations} DiT calls per chunk")
    print(f"  {'path':<10}{'first ms':>10}{'later ms':>10}{'compile s':>12}   (medians of {args.repeats} turns)")
    for name, ts, c in (("eager", e_times, None), ("compiled", c_times, compile_s)):
        first = statistics.median(t[0] for t in ts)
        later = statistics.median(x for t in ts for x in t[1:]) if len(ts[0]) > 1 else float("nan")
        print(f"  {name:<10}{first:>10.1f}{later:>10.1f}" + (f"{c:>12.1f}" if c is not None else f"{'-':>12}"))
    print(f"  compiled vs eager audio: max |diff| {err:.2e}, SNR {snr:.1f} dB; the compiled path's first turn "
          f"after the warm-up: {first_turn:.0f} ms of chunks (eager {statistics.median(map(sum, e_times)):.0f} ms)")


if __name__ == "__main__":
    main()
