"""The fixed list of voices the embedded engine speaks with, by name: packaged Piper voices and espeak-ng.

A client (`--voice`, a Realtime `session.update`) picks a voice by one of these names and nothing else: the
name is only ever a key of `VOICES`, so no client string reaches espeak-ng's voice lookup or the
filesystem. Piper voices sound human and cost ~0.15-0.2 x real time on 2 cores; the espeak-ng voices are
the tiny fallback (~0.005 x real time, no model file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from omni.model.embedded.piper import JOE_MEDIUM, PiperSynthesizer, PiperVoice
from omni.model.embedded.tts import EspeakVoice, Synthesizer

__all__ = ["DEFAULT_VOICE", "VOICES", "SpeechSynthesizer", "VoiceError", "VoiceRegistry", "VoiceSpec"]


class VoiceError(ValueError):
    """A voice name that is not in the fixed list."""


class SpeechSynthesizer(Protocol):
    """What the engine needs of a voice: text in, int16 mono speech at `sample_rate` out."""

    sample_rate: int

    def synth_int16(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True)
class VoiceSpec:
    """One entry of the list: a Piper voice, or an espeak-ng voice with its settings."""

    description: str
    piper: PiperVoice | None = None
    espeak: EspeakVoice | None = None


VOICES: Mapping[str, VoiceSpec] = {
    "joe": VoiceSpec("US English male, Piper en_US-joe-medium (neural)", piper=JOE_MEDIUM),
    "espeak": VoiceSpec("US English, espeak-ng (robotic, tiny)", espeak=EspeakVoice("en-us")),
    "espeak-female": VoiceSpec("US English female, espeak-ng (robotic, tiny)", espeak=EspeakVoice("en-us+f3")),
    "espeak-british": VoiceSpec("British English, espeak-ng (robotic, tiny)", espeak=EspeakVoice("en-gb-x-rp")),
}
DEFAULT_VOICE = "joe"


def _check(name: object) -> str:
    if not isinstance(name, str) or name not in VOICES:
        raise VoiceError(f"unknown voice {name!r}: choose one of {', '.join(sorted(VOICES))}")
    return name


class VoiceRegistry:
    """Loads each voice on first use and shares it: a Piper voice holds ~65 MB of weights and takes ~0.5 s
    to load, and its synthesiser is stateless between calls, so one per process (per engine) is enough."""

    def __init__(self, *, piper_threads: int = 2) -> None:
        self.piper_threads = piper_threads
        self._loaded: dict[str, SpeechSynthesizer] = {}

    def synthesizer(self, name: str) -> SpeechSynthesizer:
        """The synthesiser for a name of `VOICES`; VoiceError for any other string."""
        key = _check(name)
        if key not in self._loaded:
            spec = VOICES[key]
            if spec.piper is not None:
                self._loaded[key] = PiperSynthesizer(spec.piper, threads=self.piper_threads)
            else:
                self._loaded[key] = Synthesizer(spec.espeak)
        return self._loaded[key]
