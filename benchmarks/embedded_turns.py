"""Spoken turns through the embedded engine on this machine's CPU: prints numbers, asserts nothing.

    .venv/bin/python benchmarks/embedded_turns.py [--turns 20] [--threads 1] [--max-new-tokens 64] [--prepare]
        [--memory [--seed-facts N]]

Each turn is one question spoken by espeak-ng (two voices, alternating), pushed to one session in 20 ms
frames as the runtime would, then `end_turn` and `respond`. Audio is pushed as fast as the recogniser
(Whisper: a caption every second of audio, the transcript at the pause or end of turn) takes it, not paced
in real time, so the recogniser's real-time factor is its compute over the audio's duration. The reply is
spoken by the engine's default voice (Piper joe) unless --voice names another of the fixed list.

Measured per turn, from the `end_turn` call (the runtime calls it once the VAD has declared the end of
speech, so the VAD's own hang-over comes on top):
  first audio: end_turn -> the first AudioChunk of the reply (final recognition pass, prefill, decode to the
               end of the first phrase, synthesis and resampling of that phrase)
  first token: ChatSession's prefill + first decoded token
  final recognition pass: what `end_turn` still had to recognise; with --prepare each turn is first prepared
               as at a pause (`prepare_turn`: recognised and prefilled before the end of turn), so compare the
               two runs' figures to see what preparing at the pause saves
Decode tokens/s is the reply's new tokens over its decode time (which includes the ~1% spent synthesising).
Peak memory is the process's maximum resident set size. `--memory`: the session reads and writes memory
(omni.streaming.memory_lane over a fresh SQLite store in a temporary folder; MiniLM embeddings), so each first audio
includes the question's embedding, the recall and the slot's prefill; the writer thread runs beside the turns.
`--seed-facts N` first writes N first-person statements of the same user about the questions' topics (from an
earlier session), so that recall has something to find at every turn and the slot fills towards its budget: the
first audio with a full slot. The prefill column counts the slot's tokens.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.spoken import HELD_OUT, IN_DOMAIN, VOICES
from omni.memory import Memory, MemoryStore
from omni.model.embedded.asr import SAMPLE_RATE
from omni.model.embedded.text_embedding import TextEmbedder
from omni.model.embedded.tts import ESPEAK_SAMPLE_RATE, Synthesizer
from omni.model.embedded.voices import DEFAULT_VOICE
from omni.model.embedded.voices import VOICES as ENGINE_VOICES
from omni.model.embedded.wer import corpus_wer
from omni.model.lm.sampling import SamplingConfig
from omni.model.pcm import resample
from omni.streaming.engine import AudioChunk, ReplyDone, TranscriptDelta
from omni.streaming.engines.embedded import EmbeddedEngine, EmbeddedSession
from omni.streaming.memory_lane import MemoryHub

QUESTIONS = (
    *IN_DOMAIN,
    *HELD_OUT,
    "What is the weather like today?",
    "Why is the sky blue?",
    "Who was Einstein?",
    "How can I sleep better?",
    "What should I eat for dinner?",
    "Tell me a fact about dogs.",
    "What is your name?",
    "How are you today?",
)
FRAME = 320  # 20 ms at 16 kHz
PAD = 0.3  # s of silence around each question: a VAD's pre-roll and hang-over


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def run_turns(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sampling = SamplingConfig(repetition_penalty=1.1, max_new_tokens=args.max_new_tokens)
    engine = EmbeddedEngine(sampling=sampling, model=args.llm, voice=args.voice)
    print(
        f"engine ready in {time.perf_counter() - t0:.1f} s (LM load {engine.lm.load_seconds:.1f} s), "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}"
    )
    session = engine.open_session()
    hub = _memory(session, args.seed_facts) if args.memory else None
    rows: list[dict[str, float]] = []
    pairs: list[tuple[str, str]] = []
    asr_compute = asr_audio = 0.0
    for turn in range(args.turns):
        question = QUESTIONS[turn % len(QUESTIONS)]
        voice = VOICES[turn % len(VOICES)]
        speech = resample(Synthesizer(voice).synth(question), ESPEAK_SAMPLE_RATE, SAMPLE_RATE)
        pad = np.zeros(int(PAD * SAMPLE_RATE), np.float32)
        audio = np.concatenate([pad, speech, pad])
        before = session.recognizer.stats.compute_seconds
        for start in range(0, audio.size, FRAME):
            session.push_audio(audio[start : start + FRAME], start / SAMPLE_RATE)
        if args.prepare:
            session.prepare_turn()
        end_turn = time.perf_counter()
        final = [e for e in session.end_turn() if isinstance(e, TranscriptDelta) and e.final][0]
        first_audio = 0.0
        done: ReplyDone | None = None
        for event in session.respond():
            if isinstance(event, AudioChunk) and event.pcm.size and not first_audio:
                first_audio = time.perf_counter() - end_turn
            elif isinstance(event, ReplyDone):
                done = event
        assert done is not None
        asr_compute += session.recognizer.stats.compute_seconds - before
        asr_audio += audio.size / SAMPLE_RATE
        pairs.append((question, final.text))
        row = dict(done.stats, first_audio=first_audio)
        rows.append(row)
        print(
            f"turn {turn + 1:2d} first audio {first_audio * 1000:6.0f} ms"
            f" | asr end {row['asr_finish_s'] * 1000:4.0f} ms"
            f" | prefill {row['prompt_tokens']:3.0f} tok {row['prefill_s'] * 1000:5.0f} ms"
            f" | {row['new_tokens']:3.0f} tok at {row['decode_tok_s']:5.1f} tok/s | {final.text!r} -> "
            f"{done.text[:60]!r}"
        )
    firsts = [r["first_audio"] * 1000 for r in rows if r["first_audio"]]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    speech = sum(r["speech_s"] for r in rows)
    print()
    print(f"turns: {len(rows)} (voices: {', '.join(f'{v.name}@{v.rate}' for v in VOICES)})"
          f"{', each prepared at the pause' if args.prepare else ''}")
    print(
        f"end of user speech -> first assistant audio: p50 {percentile(firsts, 50):.0f} ms, "
        f"p95 {percentile(firsts, 95):.0f} ms (goal p50 <= 800 ms)"
    )
    print(
        f"  of which final recognition pass: p50 {percentile([r['asr_finish_s'] * 1000 for r in rows], 50):.0f} ms;"
        f" prefill + first token: p50 {percentile([r['first_token_s'] * 1000 for r in rows], 50):.0f} ms"
    )
    print(
        f"recogniser real-time factor: {asr_compute / asr_audio:.3f} ({asr_audio:.1f} s of audio), "
        f"transcript WER {corpus_wer(pairs):.3f}"
    )
    print(
        f"decode: median {statistics.median(r['decode_tok_s'] for r in rows):.1f} tok/s, "
        f"{sum(r['new_tokens'] for r in rows):.0f} tokens; prefill median "
        f"{statistics.median(r['prompt_tokens'] / r['prefill_s'] for r in rows if r['prefill_s']):.0f} tok/s"
    )
    print(f"speech synthesis real-time factor: {sum(r['tts_s'] for r in rows) / speech:.4f} ({speech:.0f} s of speech)")
    print(f"peak memory (max RSS): {peak_mb:.0f} MB; load average now {os.getloadavg()[0]:.2f}")
    if hub is not None:
        assert session.memory is not None
        session.memory.close()
        st = hub.memory.stats
        print(f"memory: {st.events} events, {st.notes} notes written, {st.write_stalls} writer stalls, "
              f"writer time {st.write_seconds * 1000:.0f} ms")
        hub.close()
    return 0


def _memory(session: EmbeddedSession, seed_facts: int = 0) -> MemoryHub:
    """A memory over a fresh store, attached to `session` as the runtime does; with `seed_facts`, an earlier
    session of the same user first says that many things about the questions' topics."""
    embed = TextEmbedder()
    hub = MemoryHub(Memory(MemoryStore.open(tempfile.mkdtemp(prefix="omni-bench-mem-")), embed=embed), embed)
    if seed_facts:
        earlier = hub.memory.open_session("bench", "earlier-session", started_at=time.time() - 86400)
        for k in range(seed_facts):
            topic = QUESTIONS[k % len(QUESTIONS)].rstrip("?").lower()
            earlier.add_utterance("user", f"I told my friend number {k} that I often wonder {topic}.", 2.0 * k,
                                  2.0 * k + 1.5)
        earlier.close(2.0 * seed_facts)
        hub.memory.flush()
        print(f"memory seeded with {seed_facts} statements of the same user ({hub.memory.stats.notes} notes)")
    session.use_memory(hub.open("bench", "bench-session"))
    return hub


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (omni serve runs the embedded engine on 1)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--prepare", action="store_true", help="prepare each turn at its pause (prepare_turn) first")
    p.add_argument("--voice", default=DEFAULT_VOICE, choices=list(ENGINE_VOICES), help="reply voice")
    p.add_argument("--llm", default=None, help="a .gguf file or HF decoder directory instead of SmolLM2-135M")
    p.add_argument("--memory", action="store_true", help="the session uses memory (recall at each turn's end)")
    p.add_argument("--seed-facts", type=int, default=0,
                   help="with --memory: an earlier session of the same user first says this many related things")
    return run_turns(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
