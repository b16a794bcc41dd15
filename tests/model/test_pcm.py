from __future__ import annotations

import numpy as np
import pytest

from omni.model.pcm import StreamingResampler, resample


def tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("pieces", [1, 3, 17])
def test_streaming_equals_offline(pieces: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(22050).astype(np.float32) * 0.1
    whole = resample(x, 22050, 24000)
    r = StreamingResampler(22050, 24000)
    chunked = np.concatenate([r.push(c) for c in np.array_split(x, pieces)] + [r.flush()])
    assert np.array_equal(whole, chunked)


def test_length_and_frequency_are_kept() -> None:
    y = resample(tone(1000.0, 22050), 22050, 24000)
    assert abs(y.size - 24000) <= 2
    spectrum = np.abs(np.fft.rfft(y[:24000]))
    assert abs(np.argmax(spectrum) * 24000 / 24000 - 1000.0) <= 1.0  # 1 Hz bins
    assert 0.45 < np.abs(y[1000:-1000]).max() < 0.55


def test_int16_input_same_rate_and_errors() -> None:
    pcm = (tone(440.0, 16000) * 32767).astype(np.int16)
    assert np.allclose(resample(pcm, 16000, 16000), pcm / 32768.0)
    with pytest.raises(ValueError, match="mono"):
        StreamingResampler(16000, 24000).push(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match="positive"):
        StreamingResampler(0, 24000)
