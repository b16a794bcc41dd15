"""benchmarks/qwen3_first_audio.py keeps running: one short turn on the tiny checkpoint through the omni engine."""

from __future__ import annotations

import pytest

from benchmarks.qwen3_first_audio import main

pytest.importorskip("transformers")  # the tiny checkpoint is built with it


def test_first_audio_benchmark_runs_on_the_tiny_checkpoint() -> None:
    (r,) = main(["--turns", "1", "--speech-s", "1.0", "--reply-tokens", "3", "--max-frames", "4"])
    assert 0 < r["first_audio_ms"] and 0 < r["audio_s"] <= 4 * 0.08 and r["rtf"] > 0
    assert 1 <= r["codes"] <= 4
