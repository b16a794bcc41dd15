"""Held-out speech for recognition benchmarks: sentences and voices that no test used, in two parts.

Only `benchmarks/asr_compare.py` reads this (never the tests). The sentences are everyday questions and
requests to a voice assistant, 4-14 words, with names, numbers and a few less common words.

- The tuning part (`SENTENCES` in `ESPEAK_VOICES` and `FLITE_VOICES`): the first held-out set. Its errors
  were read, one by one, to choose Whisper's decoding settings (`omni/model/embedded/whisper.py`), so its word
  error rate is no longer an estimate for unseen speech.
- The fresh part (`FRESH_SENTENCES` in `FRESH_ESPEAK_VOICES` and `FRESH_FLITE_VOICES`): written after that
  tuning and used by nothing but the final comparison; other sentences, other espeak-ng variants, rates and
  pitches, and flite voices at other speaking rates and pitches. Its numbers are the ones to quote. Any
  future tuning must use the tuning part only, or make a new fresh part.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni.model.embedded.tts import EspeakVoice, Synthesizer
from omni.model.pcm import resample

SENTENCES = (
    "What time does the bakery on the corner open tomorrow?",
    "How long should I boil an egg for a soft yolk?",
    "Remind me to call my sister after dinner.",
    "Is it going to rain in London this weekend?",
    "What is the difference between a virus and a bacterium?",
    "Can you suggest a vegetarian recipe with lentils?",
    "How many kilometers are there in a mile?",
    "Who painted the ceiling of the Sistine Chapel?",
    "Set a timer for twelve minutes please.",
    "Why do cats purr when they are happy?",
    "What should I pack for a hiking trip in the mountains?",
    "Translate good morning into Spanish.",
    "How do I get a red wine stain out of a carpet?",
    "When did the first person walk on the moon?",
    "Play some quiet piano music for studying.",
    "How old is the oldest tree in the world?",
    "How much water should a grown man drink every day?",
    "Tell me a fun fact about octopuses.",
    "Which planet has the most moons?",
    "My phone battery drains too fast, what can I do?",
    "How do volcanoes form?",
    "Is coffee bad for your heart?",
    "What is a good name for a small brown dog?",
    "Explain how a credit card works in simple words.",
    "Turn off the lights in the kitchen.",
    "How far away is the sun from the earth?",
    "What are the rules of chess for a beginner?",
    "Why is the sky blue during the day and red at sunset?",
    "Help me write a short birthday message for my grandmother.",
    "What is the fastest way to learn to type?",
)

# Written after the tuning above; none of these words were looked at in a tuning run.
FRESH_SENTENCES = (
    "What is the tallest mountain in Africa?",
    "Add milk, eggs and butter to my shopping list.",
    "How do I change a flat tyre on a bicycle?",
    "Wake me up at half past six tomorrow morning.",
    "Who wrote the novel Pride and Prejudice?",
    "What is the population of Canada?",
    "Can dogs eat grapes safely?",
    "How many hours of sleep does a teenager need?",
    "Send a message to Peter saying I will be late.",
    "What causes thunder during a storm?",
    "Read me the news headlines from this morning.",
    "How do you say thank you in Japanese?",
    "What is the boiling point of water at high altitude?",
    "Recommend a good mystery book for the summer.",
    "How long does it take to fly from Paris to New York?",
    "Why do leaves change colour in the autumn?",
    "Lower the volume a little bit.",
    "What vitamins are found in oranges?",
    "Is there a pharmacy open near me right now?",
    "Give me three ideas for a rainy afternoon with children.",
)

PAD_SECONDS = 0.3  # silence each side, as a VAD's pre-roll and hang-over leave it
RATE = 16000


@dataclass(frozen=True)
class HeldOutVoice:
    """A synthetic voice other than the engine's own: espeak-ng at another rate and pitch, or flite."""

    name: str
    espeak: EspeakVoice | None = None
    flite: str | None = None  # a flite voice: slt (US female), rms (US male), awb (Scottish male), kal16
    # flite `--setf` features: duration_stretch (> 1 slower), int_f0_target_mean (pitch, Hz)
    flite_features: tuple[tuple[str, float], ...] = ()


ESPEAK_VOICES = (
    HeldOutVoice("espeak en-us+m1 130wpm p40", espeak=EspeakVoice("en-us+m1", rate=130, pitch=40)),
    HeldOutVoice("espeak en-us+f2 200wpm p65", espeak=EspeakVoice("en-us+f2", rate=200, pitch=65)),
    HeldOutVoice("espeak en-gb-x-rp 160wpm", espeak=EspeakVoice("en-gb-x-rp", rate=160)),
    HeldOutVoice("espeak en-us+m4 190wpm p30", espeak=EspeakVoice("en-us+m4", rate=190, pitch=30)),
)
FLITE_VOICES = tuple(HeldOutVoice(f"flite {v}", flite=v) for v in ("slt", "rms", "awb", "kal16"))
FRESH_ESPEAK_VOICES = (
    HeldOutVoice("espeak en-us+m2 170wpm p45", espeak=EspeakVoice("en-us+m2", rate=170, pitch=45)),
    HeldOutVoice("espeak en-us+f4 150wpm p70", espeak=EspeakVoice("en-us+f4", rate=150, pitch=70)),
    HeldOutVoice("espeak en-gb-scotland 165wpm", espeak=EspeakVoice("en-gb-scotland", rate=165)),
    HeldOutVoice("espeak en-us+m5 210wpm p35", espeak=EspeakVoice("en-us+m5", rate=210, pitch=35)),
)
FRESH_FLITE_VOICES = (
    HeldOutVoice("flite slt slow 1.25 f0 200", flite="slt", flite_features=(("duration_stretch", 1.25),
                                                                         ("int_f0_target_mean", 200.0))),
    HeldOutVoice("flite rms fast 0.85 f0 95", flite="rms", flite_features=(("duration_stretch", 0.85),
                                                                        ("int_f0_target_mean", 95.0))),
    HeldOutVoice("flite awb slow 1.15", flite="awb", flite_features=(("duration_stretch", 1.15),)),
    HeldOutVoice("flite kal (8 kHz)", flite="kal"),
)  # fmt: skip


def flite_available() -> bool:
    return shutil.which("flite") is not None


def speak(text: str, voice: HeldOutVoice) -> np.ndarray:
    """float32 [N] at 16 kHz: `text` in `voice`, padded with silence."""
    if voice.espeak is not None:
        pcm = resample(Synthesizer(voice.espeak).synth_int16(text), Synthesizer.sample_rate, RATE)
    else:
        pcm = _flite(text, str(voice.flite), voice.flite_features)
    pad = np.zeros(int(PAD_SECONDS * RATE), np.float32)
    return np.concatenate([pad, pcm, pad])


def _flite(text: str, voice: str, features: tuple[tuple[str, float], ...] = ()) -> np.ndarray:
    setf = [a for name, value in features for a in ("--setf", f"{name}={value}")]
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "speech.wav"
        cmd = ["flite", "-voice", voice, *setf, "-t", text, "-o", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
        with wave.open(str(out)) as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
    return resample(np.frombuffer(raw, np.int16), rate, RATE)


@dataclass(frozen=True)
class HumanClip:
    """A recording of a person that ships inside a package (installed with --no-deps: only the file is read)."""

    distribution: str
    path: str
    transcript: str


HUMAN_CLIPS = (
    # Samuel Beckett's "Worstward Ho" line read by a person, 10 s, 16 kHz; in the MIT-licensed Moonshine wheel.
    HumanClip(
        "useful-moonshine-onnx",
        "moonshine_onnx/assets/beckett.wav",
        "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.",
    ),
)


def human_speech(clip: HumanClip) -> np.ndarray | None:
    """float32 [N] at 16 kHz of an installed package's recording (mono mix), or None if not installed."""
    import importlib.metadata

    try:
        path = Path(str(importlib.metadata.distribution(clip.distribution).locate_file(clip.path)))
    except importlib.metadata.PackageNotFoundError:
        return None
    with wave.open(str(path)) as w:
        rate, channels, raw = w.getframerate(), w.getnchannels(), w.readframes(w.getnframes())
    mono = np.frombuffer(raw, np.int16).reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768.0
    return resample(mono, rate, RATE)
