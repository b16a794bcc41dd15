"""Media files and data URLs that hold no picture get a ValueError that says so (was: av's IndexError)."""

from __future__ import annotations

import base64
import wave
from pathlib import Path

import numpy as np
import pytest

from omni.streaming.media_files import decode_data_url, read_image


def _wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(1600, "<i2").tobytes())
    return path


def test_a_sound_file_given_as_an_image_is_a_clear_error(tmp_path: Path) -> None:
    wav = _wav(tmp_path / "speech.wav")
    with pytest.raises(ValueError, match=r"cannot decode image file .*speech\.wav.*: it holds no picture"):
        read_image(wav)


def test_a_sound_data_url_given_as_an_image_is_a_clear_error(tmp_path: Path) -> None:
    url = "data:image/png;base64," + base64.b64encode(_wav(tmp_path / "x.wav").read_bytes()).decode()
    with pytest.raises(ValueError, match="cannot decode the image: it holds no picture"):
        decode_data_url(url, 448)
