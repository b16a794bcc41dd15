from __future__ import annotations

import threading

import numpy as np
import pytest

from omni.model.embedded.tts import ESPEAK_SAMPLE_RATE, EspeakVoice, Synthesizer, TTSError, list_voices

TEXT = "Hello, this is a test of the streaming omni assistant. Can you hear me clearly?"


def test_speech_is_int16_at_22050_with_plausible_length_and_level() -> None:
    pcm = Synthesizer(EspeakVoice("en-us", rate=150)).synth_int16(TEXT)
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    # environment.md measured this sentence with the espeak-ng program at -s 150: 5.48 s, max 0.70, RMS 0.081.
    # The library is the same engine; allow for its version and the trailing pause.
    seconds = pcm.size / ESPEAK_SAMPLE_RATE
    assert 4.0 < seconds < 6.5
    x = pcm.astype(np.float32) / 32768
    assert 0.3 < np.abs(x).max() <= 1.0
    assert 0.04 < np.sqrt(np.mean(x**2)) < 0.2


def close(a: np.ndarray, b: np.ndarray) -> bool:
    # espeak-ng varies its timing a little from call to call (lengths differ by ~0.1%, never more than 1%).
    return abs(a.size - b.size) <= 0.01 * b.size


def test_rate_and_voice() -> None:
    slow = Synthesizer(EspeakVoice("en-us", rate=120)).synth_int16(TEXT)
    fast = Synthesizer(EspeakVoice("en-us", rate=260)).synth_int16(TEXT)
    assert slow.size > 1.6 * fast.size
    default = Synthesizer().synth_int16(TEXT)
    assert close(default, Synthesizer().synth_int16(TEXT))
    other = Synthesizer(EspeakVoice("en-us+f3")).synth_int16(TEXT)
    assert other.size > 0 and not np.array_equal(other[: default.size], default[: other.size])


def test_float_output_and_empty_text() -> None:
    s = Synthesizer()
    x = s.synth("one two three")
    assert x.dtype == np.float32 and -1 <= x.min() and x.max() < 1
    assert s.synth_int16("   ").size == 0


def test_concurrent_synthesis_with_different_voices_matches_sequential() -> None:
    """espeak-ng's voice and rate are global: the lock must keep each thread's parameters for its text."""
    voices = [EspeakVoice("en-us", rate=150), EspeakVoice("en-us+m3", rate=220), EspeakVoice("en-gb-x-rp", rate=180)]
    expected = [Synthesizer(v).synth_int16(TEXT) for v in voices]
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(len(voices))}

    def work(i: int) -> None:
        s = Synthesizer(voices[i])
        for _ in range(4):
            results[i].append(s.synth_int16(TEXT))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(voices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        assert all(close(o, expected[i]) for o in outs)  # the rates differ by 20% or more


def test_unknown_voice_and_bad_parameters() -> None:
    with pytest.raises(TTSError, match="no-such-voice"):
        Synthesizer(EspeakVoice("no-such-voice")).synth_int16("hello")
    with pytest.raises(ValueError, match="rate"):
        EspeakVoice(rate=20)


def test_voices_come_from_the_wheel_data() -> None:
    voices = list_voices()
    assert "en-us" in voices and "en-us+m3" in voices
