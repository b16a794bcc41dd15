"""Spoken test audio made at test time with espeak-ng (our TTS module), at the recogniser's 16 kHz."""

from __future__ import annotations

import numpy as np

from model.speech.resample import resample
from model.speech.tts import ESPEAK_SAMPLE_RATE, Synthesizer, Voice

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
