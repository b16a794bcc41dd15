"""Audio front-end: log-mel parity with transformers' WhisperFeatureExtractor, streaming, resampling, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omni.model.encoders.audio_frontend import (
    AudioInputError,
    LogMel,
    load_audio,
    mel_filter_bank,
    mel_frame_count,
    to_mono_16k,
)

# The reference (Qwen2.5-Omni processor settings: 128 bins, padding to 30 s, attention mask) runs the
# same float32 FFT -> power -> mel -> log10 chain; what is left is float32 rounding in the FFT and the mel
# matmul (measured max 1.2e-7 on values of magnitude ~1.4). 1e-5 absolute leaves room for other BLAS/FFT
# back-ends while still catching any wrong window, padding, filter or floor (those move values by >1e-2).
MEL_ATOL = 1e-5


def _speech_like(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    x[: n // 3] *= 1e-4  # a quiet lead-in: exercises the 80 dB floor
    return x.astype(np.float32)


def _reference_mel(x: np.ndarray) -> torch.Tensor:
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=128)
    out = fe(x, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt")
    n_valid = int(out["attention_mask"].sum())
    return out["input_features"][0, :, :n_valid]


@pytest.mark.parametrize("n", [1, 150, 201, 1600, 16000 * 3 + 77])
def test_log_mel_matches_whisper_feature_extractor(n: int) -> None:
    x = _speech_like(n)
    ref = _reference_mel(x)
    ours = LogMel()(torch.from_numpy(x))
    assert ours.shape == ref.shape == (128, mel_frame_count(n))
    torch.testing.assert_close(ours, ref, atol=MEL_ATOL, rtol=0)


def test_mel_filters_match_transformers() -> None:
    from transformers.audio_utils import mel_filter_bank as hf_bank

    ref = hf_bank(num_frequency_bins=201, num_mel_filters=128, min_frequency=0.0, max_frequency=8000.0,
                  sampling_rate=16000, norm="slaney", mel_scale="slaney")
    torch.testing.assert_close(mel_filter_bank(), torch.from_numpy(ref).float(), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 160, 333, 5000])
@pytest.mark.parametrize("n", [150, 201, 16000 + 77])
def test_streaming_log_mel_equals_offline(n: int, chunk: int) -> None:
    x = torch.from_numpy(_speech_like(n, seed=1)[::-1].copy())  # loud first: the running peak is final early
    x[:40] += 0.9
    mel = LogMel()
    offline = mel(x)
    state = mel.init_state()
    parts = [mel.step(state, x[i : i + chunk]) for i in range(0, n, chunk)] + [mel.flush(state)]
    streamed = torch.cat(parts, dim=1)
    assert streamed.shape == offline.shape
    torch.testing.assert_close(streamed, offline, atol=1e-6, rtol=0)


def test_streaming_frames_are_emitted_as_soon_as_their_window_is_complete() -> None:
    mel = LogMel()
    state = mel.init_state()
    assert mel.step(state, torch.zeros(200)).shape == (128, 0)  # frame 0 needs samples up to 200
    assert mel.step(state, torch.zeros(1)).shape == (128, 1)
    assert mel.step(state, torch.zeros(160)).shape == (128, 1)


def test_streaming_floor_uses_the_peak_so_far() -> None:
    # Offline, the 80 dB floor comes from the clip's loudest frame; streaming can only know the loudest
    # frame so far. Silence before a later loud part is floored lower when streamed.
    x = torch.zeros(3200)
    x[1600:] = torch.from_numpy(_speech_like(1600, seed=2)) * 100
    mel = LogMel()
    state = mel.init_state()
    streamed = torch.cat([mel.step(state, x[:1600]), mel.step(state, x[1600:]), mel.flush(state)], dim=1)
    offline = mel(x)
    assert streamed.shape == offline.shape
    assert float(streamed[:, 0].max()) < float(offline[:, 0].min())
    torch.testing.assert_close(streamed[:, -5:], offline[:, -5:], atol=1e-6, rtol=0)


def test_stereo_8k_is_downmixed_and_resampled() -> None:
    sr, n = 8000, 8000
    t = np.arange(n) / sr
    left = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    stereo = np.stack([left, np.zeros_like(left)])
    out = to_mono_16k(stereo, sr)
    assert out.dtype == torch.float32
    assert abs(out.numel() - 2 * n) <= 2
    # mean down-mix halves a one-sided tone; resampling keeps a 300 Hz tone's amplitude
    assert abs(float(out[1000:-1000].abs().max()) - 0.25) < 0.01
    ref = 0.25 * np.sin(2 * np.pi * 300 * np.arange(out.numel()) / 16000)
    assert float(np.abs(out.numpy()[1000:-1000] - ref[1000:-1000]).max()) < 0.01


def test_int16_mono_at_16k_passes_through() -> None:
    x = (np.arange(480) % 100 - 50).astype(np.int16)
    out = to_mono_16k(x, 16000)
    torch.testing.assert_close(out, torch.from_numpy(x.astype(np.float32) / 32768.0))


def test_load_audio_file_resamples(tmp_path) -> None:
    import av

    path = tmp_path / "tone.wav"
    sr, n = 22050, 22050
    tone = (0.4 * np.sin(2 * np.pi * 200 * np.arange(n) / sr) * 32767).astype(np.int16)
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=sr, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]).T.reshape(1, -1).copy(), format="s16",
                                           layout="stereo")
        frame.sample_rate = sr
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    out = load_audio(path)
    assert abs(out.numel() - 16000) <= 64
    assert abs(float(out[2000:-2000].abs().max()) - 0.4) < 0.01


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.zeros((2, 0), np.float32)])
def test_zero_length_audio_is_rejected(bad: np.ndarray) -> None:
    with pytest.raises(AudioInputError, match="zero-length"):
        to_mono_16k(bad, 8000)
    with pytest.raises(AudioInputError, match="zero-length"):
        LogMel()(torch.zeros(0))
    mel = LogMel()
    with pytest.raises(AudioInputError, match="zero-length"):
        mel.flush(mel.init_state())


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(AudioInputError, match=r"\[samples\]"):
        LogMel()(torch.zeros(2, 100))
    with pytest.raises(AudioInputError, match="channels"):
        to_mono_16k(np.zeros((1, 2, 3), np.float32), 16000)


def test_frame_count() -> None:
    assert [mel_frame_count(n) for n in (1, 160, 161, 48000)] == [1, 1, 2, 300]
    assert mel_frame_count(16000 * 2) == 200 == math.ceil(32000 / 160)


# ---- Qwen3-Omni: the processor pads to the batch's longest clip (padding=True), not to 30 s ----------------


def _reference_mel_qwen3(x: np.ndarray) -> torch.Tensor:
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=128)  # the Qwen3-Omni processor's audio kwargs:
    out = fe(x, sampling_rate=16000, padding=True, truncation=False, return_attention_mask=True, return_tensors="pt")
    n_valid = int(out["attention_mask"].sum())
    assert n_valid == out["input_features"].shape[-1]  # one clip: no padding at all
    return out["input_features"][0]


@pytest.mark.parametrize("n", [201, 320, 1601, 16000 * 3 + 77])
def test_unpadded_log_mel_matches_the_qwen3_processor(n: int) -> None:
    x = _speech_like(n)
    ref = _reference_mel_qwen3(x)
    mel = LogMel()
    ours = mel.unpadded(torch.from_numpy(x))
    assert ours.shape == ref.shape == (128, n // 160)
    torch.testing.assert_close(ours, ref, atol=MEL_ATOL, rtol=0)
    # the 30-s-padded variant differs only in the last frame, and only when its window (reaching 40 samples
    # past 160 * (n // 160)) runs past the end
    padded = mel(torch.from_numpy(x))[:, : n // 160]
    torch.testing.assert_close(padded[:, :-1], ours[:, :-1], atol=MEL_ATOL, rtol=0)
    if n % 160 < 40:
        assert (padded[:, -1] - ours[:, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("chunk", [1, 160, 333, 5000])
@pytest.mark.parametrize("n", [201, 16000 + 77, 16000 + 160])
def test_streaming_unpadded_log_mel_equals_offline(n: int, chunk: int) -> None:
    x = torch.from_numpy(_speech_like(n, seed=1)[::-1].copy())
    x[:40] += 0.9
    mel = LogMel()
    offline = mel.unpadded(x)
    state = mel.init_state()
    parts = [mel.step(state, x[i : i + chunk]) for i in range(0, n, chunk)] + [mel.flush(state, reflect_end=True)]
    streamed = torch.cat(parts, dim=1)
    assert streamed.shape == offline.shape
    torch.testing.assert_close(streamed, offline, atol=1e-6, rtol=0)


def test_unpadded_rejects_clips_too_short_to_reflect() -> None:
    with pytest.raises(AudioInputError, match="too short"):
        LogMel().unpadded(torch.zeros(200))
    mel = LogMel()
    state = mel.init_state()
    mel.step(state, torch.zeros(150))
    with pytest.raises(AudioInputError, match="too short"):
        mel.flush(state, reflect_end=True)
