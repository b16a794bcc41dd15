"""Qwen3-Omni end of user turn -> first audio sample, through the omni engine (`OmniEngine`, the engine that
`omni serve --engine omni` runs), on a checkpoint directory or on the tests' tiny random one (CPU by default).

    .venv/bin/python benchmarks/qwen3_first_audio.py                  # builds the tiny checkpoint (needs transformers)
    .venv/bin/python benchmarks/qwen3_first_audio.py --model DIR --device cuda --dtype bfloat16

Each turn: the user's audio (`--speech-s` seconds) is pushed in 20-ms frames as a microphone would send them,
so the engine prefills every audio window that completes while the user speaks; the clock starts when the turn
ends (`end_turn`, what the runtime calls once its VAD has decided, so the VAD's silence wait is excluded) and
stops at the first `AudioChunk` with samples: the last partial audio window, <|im_end|> and the assistant
prefix, the Thinker's first token, the Talker's 9-position prefix and first frame with its code predictor
pass, and Code2Wav's first chunk (`--first-chunk-frames`). Also printed: when the first text was shown (the
tiny checkpoint's byte vocabulary makes mostly invalid UTF-8, which the detokenizer holds back, so there it comes
late) and the whole reply's real-time factor (reply wall time / audio seconds). Turns follow
one another in one session (the history grows), after an untimed warm-up turn.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.model.lm.sampling import SamplingConfig
from omni.model.qwen3.talker import GREEDY, read_speech_config, talker_sampling
from omni.model.qwen3.voice_session import Qwen3VoiceSession
from omni.streaming.engine import AudioChunk, ReplyDone, TextDelta
from omni.streaming.engines.omni import OmniEngine

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FRAME_S = 0.02


def _speech(seconds: float, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * t)) + 0.02 * g.standard_normal(t.shape)).astype(np.float32)


def turn(session: Any, pcm: np.ndarray, t_media: float) -> dict[str, float]:
    frame = int(16000 * FRAME_S)
    for i in range(0, len(pcm), frame):
        session.push_audio(pcm[i : i + frame], t_media + i / 16000)
    t0 = time.perf_counter()
    session.end_turn()
    first_text = first_audio = 0.0
    samples = 0
    stats: dict[str, float] = {}
    for ev in session.respond():
        now = time.perf_counter() - t0
        if isinstance(ev, TextDelta) and ev.text and not first_text:
            first_text = now
        elif isinstance(ev, AudioChunk) and len(ev.pcm):
            first_audio = first_audio or now
            samples += len(ev.pcm)
        elif isinstance(ev, ReplyDone):
            stats = ev.stats
    wall = time.perf_counter() - t0
    if not first_audio:
        raise RuntimeError("the reply had no audio (is this a Thinking/Captioner checkpoint without a Talker?)")
    return {"first_audio_ms": first_audio * 1e3, "first_text_shown_ms": first_text * 1e3,
            "audio_s": samples / 24000, "rtf": wall / (samples / 24000), "codes": stats.get("codes", 0.0)}


def measure(directory: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    dtype = DTYPES[args.dtype] if args.dtype else None
    t = time.perf_counter()
    tk = read_speech_config(directory)[1].talker
    assert tk is not None
    talker = dataclasses.replace(GREEDY if args.greedy_talker else talker_sampling(tk, seed=0),
                                 max_new_tokens=args.max_frames)
    engine = OmniEngine(directory, args.device, dtype, speak=True, seed=0, talker_sampling=talker,
                        sampling=SamplingConfig(max_new_tokens=args.reply_tokens, seed=0))
    print(f"load: {time.perf_counter() - t:.2f} s ({directory}, {args.device})")
    session = engine.open_session()
    voiced = session.speaking
    if not isinstance(voiced, Qwen3VoiceSession):
        raise SystemExit(f"{directory}: not a speaking Qwen3-Omni checkpoint (got {type(voiced).__name__})")
    voiced.speech.streamer.first_chunk_frames = args.first_chunk_frames  # a per-session Code2Wav setting
    turn(session, _speech(args.speech_s, 0), 0.0)  # warm-up
    out = []
    for k in range(args.turns):
        r = turn(session, _speech(args.speech_s, k + 1), 100.0 * (k + 1))
        out.append(r)
        print(f"turn {k + 1}: first audio {r['first_audio_ms']:.0f} ms, first text shown "
              f"{r['first_text_shown_ms']:.0f} ms, {r['audio_s']:.2f} s of audio ({r['codes']:.0f} frames), "
              f"RTF {r['rtf']:.2f}")
    fa = [r["first_audio_ms"] for r in out]
    print(f"end of turn -> first audio: median {statistics.median(fa):.0f} ms over {len(fa)} turns "
          f"(min {min(fa):.0f}, max {max(fa):.0f}); VAD wait excluded")
    return out


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="Qwen3-Omni -Instruct directory (default: the tiny test one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the checkpoint's")
    p.add_argument("--speech-s", type=float, default=3.0, help="seconds the user speaks per turn")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--reply-tokens", type=int, default=16, help="Thinker tokens per reply")
    p.add_argument("--first-chunk-frames", type=int, default=1, help="Code2Wav frames before the first audio")
    p.add_argument("--max-frames", type=int, default=40,
                   help="Talker frames per reply at most (80 ms each; random weights seldom end by themselves)")
    p.add_argument("--greedy-talker", action="store_true", help="greedy Talker (default: the reference sampling)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is not None:
        return measure(Path(args.model), args)
    from tests.model.qwen3_tiny import save_tiny_qwen3

    with tempfile.TemporaryDirectory() as tmp:
        return measure(save_tiny_qwen3(Path(tmp) / "qwen3_tiny")[1], args)


if __name__ == "__main__":
    main()
