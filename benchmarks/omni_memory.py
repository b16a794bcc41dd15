"""The omni engine's first audio with memory on and off, and its recall time (issue 12), on the tests' tiny random
Qwen2.5-Omni checkpoint (built with transformers, a test-only dependency) or a real checkpoint (--model DIR).

    PYTHONPATH=. .venv/bin/python benchmarks/omni_memory.py [--turns 6] [--history 20] [--model DIR] [--budget N]

Memory is filled by `--history` earlier turns of 4.5 s of audio with a camera (one session, one event per
turn, closed: its events written); then `--turns` spoken turns are answered by a session with memory and one
without. First audio is timed from the `respond` call (so the recall, the slot's prefill and the prompt's end
are inside it) to the first audio chunk. The recall time is the memory's ranking and packing
(`Recall.elapsed_ms`), the question's vector being the Thinker's own input embeddings of what was said (no text
embedding for a spoken question), scored against the feature lanes and the text items' Thinker-space keys, as
`omni serve` configures the memory. `--budget`: the slot's budget in tokens (the engine's default otherwise). Last,
the slot's prefill alone: in one forward (as the engine does) against a piece at a time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from omni.memory import Memory, MemoryConfig, MemoryStore, SegmenterConfig
from omni.memory.testing import HashingEmbedder
from omni.model.conversation import SlotPiece
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders.omni import load_thinker
from omni.model.loaders.talker_weights import load_speech
from omni.model.speech_session import SpeakingSession
from omni.model.token2wav.solver import SolverConfig
from omni.model.token2wav.streaming import StreamingSchedule
from omni.model.voices import Voice, VoiceBank
from omni.streaming.engine import AudioChunk
from omni.streaming.engines.omni import OmniEngine, OmniEngineSession
from omni.streaming.engines.omni_memory import DEFAULT_BUDGET, THINKER_SPACE, ThinkerTextKeys
from omni.streaming.memory_lane import MemoryHub


def tiny_checkpoint(folder: Path) -> Path:
    from tests.model.omni_tiny import IDS, save_tiny_omni

    _, d = save_tiny_omni(folder / "ckpt")
    g = torch.Generator().manual_seed(0)
    bank = {n: Voice(n, IDS["spk_bos"], torch.randn(1, 16, generator=g), torch.randn(1, 60, 80, generator=g) - 4)
            for n in ("Chelsie", "Ethan")}
    VoiceBank(bank).save(Path(d) / "spk_dict.pt")
    return Path(d)


def clip(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def turn(s: OmniEngineSession, pcm: np.ndarray, frames: list[np.ndarray] | None = None) -> float:
    """One spoken turn, at the session's media time (its lane's clock, as the runtime's clock runs); seconds from
    `respond` to the first audio chunk."""
    t0 = s.memory.lane.clock() if s.memory is not None else 0.0
    for i in range(0, len(pcm), 4000):
        if frames is not None:
            s.push_video(frames[(i // 8000) % len(frames)], t0 + i / 16000)
        s.push_audio(pcm[i : i + 4000], t0 + i / 16000)
    s.end_turn()
    start = time.perf_counter()
    first = 0.0
    for ev in s.respond():
        if isinstance(ev, AudioChunk) and len(ev.pcm) and not first:
            first = time.perf_counter() - start
    return first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a Qwen2.5-Omni checkpoint directory (default: the tiny one)")
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="slot tokens (default %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.model) if args.model else tiny_checkpoint(Path(tmp))
        thinker, speech = load_thinker(d), load_speech(d)
        engine = OmniEngine(
            None, models=(thinker, speech), sampling=SamplingConfig(temperature=0.0, max_new_tokens=12),
            talker_sampling=speech.talker.cfg.sampling(temperature=0.0, max_new_tokens=80), seed=0,
            schedule=StreamingSchedule(first_chunk_blocks=1, chunk_blocks=1), solver=SolverConfig(num_steps=3),
            memory_budget=args.budget,
        )
        embed = HashingEmbedder()
        # one event per turn (each turn is short here): the keys of a turn's sound are its own
        config = MemoryConfig(segmenter=SegmenterConfig(min_turn_s=0.0))
        spaces = {THINKER_SPACE: ThinkerTextKeys(thinker)}
        hub = MemoryHub(Memory(MemoryStore.open(str(Path(tmp) / "mem")), embed=embed, config=config,
                               text_spaces=spaces), embed)
        rng = np.random.default_rng(1)
        frames = [rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(4)]
        history = engine.open_session()
        history.use_memory(hub.open("bench", "history"))
        for k in range(args.history):
            turn(history, clip(4.5, seed=k), frames)
        assert history.memory is not None
        history.memory.lane.close()
        events = len(hub.memory.store.load_events("bench"))

        on, off = engine.open_session(), engine.open_session()
        on.use_memory(hub.open("bench", "asking"))
        first_on, first_off, recall_ms, slot = [], [], [], []
        for k in range(args.turns):
            pcm = clip(4.5, seed=k % args.history)  # a sound heard before: the recall finds it
            first_on.append(turn(on, pcm))
            assert on.memory is not None
            recall = on.memory.lane.take_recalled()
            recall_ms.append(recall.elapsed_ms if recall is not None else 0.0)
            slot.append(sum(x.tokens.shape[0] + 2 if not isinstance(x, str) else len(thinker.prompt.text(x))
                            for x in on.memory.last_slot))
            first_off.append(turn(off, pcm))
        prefill = slot_prefill(engine, on.memory.last_slot)
        on.memory.lane.close()
        hub.close()
    med = statistics.median
    print(f"omni engine, {'tiny checkpoint' if args.model is None else d}, {events} events in memory, "
          f"slot budget {args.budget}, {args.turns} turns (medians; first audio from respond() to the first chunk)")
    print(f"first audio, memory off: {med(first_off) * 1e3:8.1f} ms")
    print(f"first audio, memory on:  {med(first_on) * 1e3:8.1f} ms  (slot {med(slot):.0f} tokens)")
    print(f"recall (rank + pack):    {med(recall_ms):8.2f} ms  (max {max(recall_ms):.2f} ms)")
    print(f"slot prefill (Thinker + Talker), last slot of {len(on.memory.last_slot)} pieces: one forward "
          f"{prefill[0] * 1e3:.1f} ms, piece by piece {prefill[1] * 1e3:.1f} ms")


def feed_slot_piecewise(s: SpeakingSession, slot: list[SlotPiece]) -> None:
    """End the open user turn with `slot` and the assistant header a piece at a time through the public feeds (the
    reference for ThinkerSession.end_user_turn's one forward, and how it was done before)."""
    p = s.prompt
    s.feed_ids(p.turn_end() + p.turn_start("system"))
    for piece in slot:
        if isinstance(piece, str):
            s.add_text(piece)
        elif piece.kind == "audio":
            s.add_audio_tokens(piece.tokens)
        else:
            s.add_image_tokens(piece.tokens, piece.grid)
    s.feed_ids(p.turn_end() + p.turn_start("assistant"))


def slot_prefill(engine: OmniEngine, slot: list[SlotPiece], repeats: int = 5) -> tuple[float, float]:
    """Median seconds to prefill `slot` and the assistant header: as ThinkerSession.end_user_turn does (one forward),
    and a piece at a time through the public feeds (how it was done before), on one session rolled back between."""
    s = engine.open_session().speaking
    assert isinstance(s, SpeakingSession)
    one, each = [], []
    with torch.inference_mode():
        s.start_user_turn()
        s.add_text("what was that?")
        mark = s.mark()
        for _ in range(repeats):
            t0 = time.perf_counter()
            s.end_user_turn(slot)
            one.append(time.perf_counter() - t0)
            s.rollback(mark)
            t0 = time.perf_counter()
            feed_slot_piecewise(s, slot)
            each.append(time.perf_counter() - t0)
            s.rollback(mark)
    return statistics.median(one), statistics.median(each)


if __name__ == "__main__":
    main()
