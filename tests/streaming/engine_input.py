"""Test-only audio input for the Omni engine tests (Qwen2.5-Omni and Qwen3-Omni families alike)."""

from __future__ import annotations

import numpy as np

from omni.streaming.engines.omni import OmniEngineSession


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    """Seeded noise at 0.1 rms, float32 mono 16 kHz: input the models were not tuned on."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


def speak(s: OmniEngineSession, pcm: np.ndarray, piece: float = 0.5, t0: float = 0.0) -> None:
    """Push `pcm` in `piece`-second pieces stamped from `t0`, then end the turn."""
    n = int(piece * 16000)
    for i in range(0, len(pcm), n):
        s.push_audio(pcm[i : i + n], t0 + i / 16000)
    s.end_turn()
