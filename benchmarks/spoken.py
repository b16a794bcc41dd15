"""Spoken questions for benchmarks and tests, made at run time with espeak-ng (our TTS module, so the
benchmarks need nothing from tests/), and 16-bit WAV helpers.

`python -m benchmarks.spoken speak TEXT OUT.wav [RATE] [PAD_SECONDS]` writes one utterance; run from another
process, it keeps espeak-ng's global state away from the caller (see `spoken_fresh`).
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np

from omni.model.embedded.tts import ESPEAK_SAMPLE_RATE, EspeakVoice, Synthesizer
from omni.model.pcm import resample

# 0.3 s of silence each side: what a VAD's pre-roll and hang-over leave around an utterance.
PAD_SECONDS = 0.3

# Two voices: espeak-ng's default en-us at its default rate, and a male variant, slower.
VOICES = (EspeakVoice("en-us", rate=175), EspeakVoice("en-us+m3", rate=150))

# Questions the conversational LM's templates generate (in-domain) ...
IN_DOMAIN = (
    "What is the capital of France?",
    "Can you tell me a joke?",
    "Tell me about the moon.",
    "How many days are in a week?",
    "Who wrote Romeo and Juliet?",
    "What is the biggest animal in the world?",
)
# ... and questions it does not contain as such (held out: other frames, other fillers).
HELD_OUT = (
    "Why is the ocean salty?",
    "How do airplanes fly?",
    "What do elephants eat?",
    "Can you recommend a good movie?",
    "How far is the nearest star?",
    "Where do penguins live?",
)


def spoken(text: str, voice: EspeakVoice = VOICES[0], rate: int = 16000) -> np.ndarray:
    """float32 [N] at `rate`: `text` spoken by espeak-ng, padded with silence."""
    speech = resample(Synthesizer(voice).synth(text), ESPEAK_SAMPLE_RATE, rate)
    pad = np.zeros(int(PAD_SECONDS * rate), np.float32)
    return np.concatenate([pad, speech, pad])


def spoken_fresh(text: str, voice: EspeakVoice = VOICES[0], rate: int = 16000) -> np.ndarray:
    """`spoken`, made in a child process: espeak-ng keeps internal state between syntheses (the same text comes
    out a few samples longer or shorter after other voices have spoken), so audio made in the test process
    depends on which tests ran before. A fresh process makes the same samples whatever the test order."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "speech.npy"
        code = (
            "import sys, numpy as np; from omni.model.embedded.tts import EspeakVoice; "
            "from benchmarks.spoken import spoken; v = EspeakVoice(sys.argv[3], rate=int(sys.argv[4])); "
            "np.save(sys.argv[1], spoken(sys.argv[2], v, int(sys.argv[5])))"
        )
        root = str(Path(__file__).resolve().parents[1])
        subprocess.run([sys.executable, "-c", code, str(out), text, voice.name, str(voice.rate), str(rate)],
                       check=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
        return np.load(out)


def write_wav(path: str | Path, pcm: np.ndarray, rate: int) -> None:
    """int16 mono samples as a 16-bit WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit mono WAV file: (int16 samples, rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono WAV")
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy(), w.getframerate()


def main(argv: list[str]) -> int:
    """`speak TEXT OUT.wav [RATE] [PAD_SECONDS]`: TEXT in espeak-ng's en-us voice at 150 words a minute,
    followed by PAD_SECONDS of silence, as a 16-bit WAV at RATE (default 16000)."""
    if len(argv) < 3 or argv[0] != "speak":
        print("usage: python -m benchmarks.spoken speak TEXT OUT.wav [RATE] [PAD_SECONDS]", file=sys.stderr)
        return 2
    rate = int(argv[3]) if len(argv) > 3 else 16000
    speech = resample(Synthesizer(EspeakVoice("en-us", rate=150)).synth(argv[1]), ESPEAK_SAMPLE_RATE, rate)
    pad = np.zeros(int(float(argv[4]) * rate) if len(argv) > 4 else 0, np.float32)
    pcm = np.clip(np.round(np.concatenate([speech, pad]) * 32768), -32768, 32767).astype(np.int16)
    write_wav(argv[2], pcm, rate)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
