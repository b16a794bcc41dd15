"""Spoken test audio made at test time with espeak-ng (our TTS module), at the recogniser's 16 kHz."""

from __future__ import annotations

import numpy as np

from model.embedded.tts import ESPEAK_SAMPLE_RATE, Synthesizer, Voice
from model.pcm import resample

# 0.3 s of silence each side: what a VAD's pre-roll and hang-over leave around an utterance.
PAD_SECONDS = 0.3

# Two voices: espeak-ng's default en-us at its default rate, and a male variant, slower.
VOICES = (Voice("en-us", rate=175), Voice("en-us+m3", rate=150))

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


def spoken(text: str, voice: Voice = VOICES[0], rate: int = 16000) -> np.ndarray:
    """float32 [N] at `rate`: `text` spoken by espeak-ng, padded with silence."""
    speech = resample(Synthesizer(voice).synth(text), ESPEAK_SAMPLE_RATE, rate)
    pad = np.zeros(int(PAD_SECONDS * rate), np.float32)
    return np.concatenate([pad, speech, pad])


def spoken_fresh(text: str, voice: Voice = VOICES[0], rate: int = 16000) -> np.ndarray:
    """`spoken`, made in a child process: espeak-ng keeps internal state between syntheses (the same text comes
    out a few samples longer or shorter after other voices have spoken), so audio made in the test process
    depends on which tests ran before. A fresh process makes the same samples whatever the test order."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "speech.npy"
        code = (
            "import sys, numpy as np; from model.embedded.tts import Voice; "
            "from tests.model.embedded.spoken import spoken; "
            "np.save(sys.argv[1], spoken(sys.argv[2], Voice(sys.argv[3], rate=int(sys.argv[4])), int(sys.argv[5])))"
        )
        root = str(Path(__file__).resolve().parents[3])
        subprocess.run([sys.executable, "-c", code, str(out), text, voice.name, str(voice.rate), str(rate)],
                       check=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
        return np.load(out)
