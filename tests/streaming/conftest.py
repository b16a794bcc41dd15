"""Fixtures for the runtime tests: spoken test audio (espeak-ng, made once per run), the VAD, a worker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.spoken import read_wav
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker

UTTERANCE = "Hello there, this is a test of the streaming assistant. Can you hear me?"


def make_speech_wav(path: Path, text: str = UTTERANCE, rate: int = 16000, pad: float = 0.0) -> Path:
    """espeak-ng in a child process (its library keeps global state; see benchmarks.spoken)."""
    subprocess.run(
        [sys.executable, "-m", "benchmarks.spoken", "speak", text, str(path), str(rate), str(pad)],
        check=True,
        timeout=60,
    )
    return path


@pytest.fixture(scope="session")
def speech16k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 4 s of spoken English, int16 mono at 16 kHz, no padding."""
    pcm, rate = read_wav(make_speech_wav(tmp_path_factory.mktemp("speech") / "speech16k.wav"))
    assert rate == 16000
    return pcm


@pytest.fixture(scope="session")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture
def worker() -> Iterator[DeviceWorker]:
    w = DeviceWorker()
    w.start()
    yield w
    w.stop()


@pytest.fixture
def media() -> Iterator[DeviceWorker]:
    """The media lane (VAD, resampling, frame conversion) beside the device worker."""
    w = DeviceWorker("media-worker")
    w.start()
    yield w
    w.stop()


from tests.model.conftest import qwen3_tiny_dir  # noqa: E402,F401  (the tiny Qwen3-Omni checkpoint, once per run)
