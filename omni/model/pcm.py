"""PCM conversion, written once for every path: sample format, channel layout, down-mix and resampling.

Every audio path (the Thinker's offline front end, the live input stage behind WebRTC and the desktop, the
spoken reply out to 48 kHz, espeak-ng's 22,050 Hz speech) converts with these functions, so they cannot drift
apart. They once did: the live path let libswresample mix stereo to mono at -3 dB per channel
(0.707 * (L + R)), the offline path took the channel mean that the reference processor (librosa's `to_mono`)
takes, so a 0.25-peak tone on two equal channels reached the model at 0.354 live and 0.250 offline (+3 dB on
every log-mel value). Here the down-mix is an explicit channel mean and av is used only to resample mono
float32.

Conventions: float samples are float32 in [-1, 1]; int16 maps to float by / 32768 and back by * 32768,
rounded and clipped (libswresample's own s16 <-> float conversion, so replacing it changes no sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "AudioInputError",
    "StreamingResampler",
    "downmix",
    "planar",
    "resample",
    "to_float32",
    "to_int16",
]


class AudioInputError(ValueError):
    """Audio that cannot be turned into model input (empty, wrong shape or sample type, unreadable)."""


def to_float32(pcm: np.ndarray) -> np.ndarray:
    """int16 or float samples (any shape) -> float32 in [-1, 1]."""
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    if not np.issubdtype(pcm.dtype, np.floating):
        raise AudioInputError(f"audio samples must be int16 or float, got {pcm.dtype}")
    return pcm.astype(np.float32, copy=False)


def to_int16(pcm: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> int16 (scaled by 32768, rounded, clipped to the int16 range)."""
    return np.clip(np.rint(pcm * 32768.0), -32768, 32767).astype(np.int16)


def planar(pcm: np.ndarray, channels: int) -> np.ndarray:
    """Samples of `channels` channels -> planar [channels, N].

    Accepts [N] (mono, or interleaved when `channels` > 1), [1, N * channels] (packed, as av's to_ndarray gives
    interleaved formats such as aiortc's s16 stereo) and [channels, N] (planar already).
    """
    if channels < 1:
        raise AudioInputError(f"audio needs at least one channel, got {channels}")
    if pcm.ndim == 2 and pcm.shape[0] == channels:
        return pcm
    if pcm.ndim == 1 or (pcm.ndim == 2 and pcm.shape[0] == 1):
        flat = pcm.reshape(-1)
        if flat.size % channels:
            raise AudioInputError(f"{flat.size} interleaved samples do not split into {channels} channels")
        return flat.reshape(-1, channels).T
    raise AudioInputError(
        f"audio must be [samples], [1, samples * channels] or [channels, samples]; got shape {tuple(pcm.shape)} "
        f"for {channels} channel(s)"
    )


def downmix(pcm: np.ndarray) -> np.ndarray:
    """Planar [C, N] -> mono [N] by the channel mean (the reference processor's down-mix; never -3 dB per
    channel as libswresample's mono layout would)."""
    if pcm.ndim != 2:
        raise AudioInputError(f"downmix takes planar [channels, samples], got shape {tuple(pcm.shape)}")
    return pcm[0] if pcm.shape[0] == 1 else pcm.mean(axis=0, dtype=np.float32)


class StreamingResampler:
    """float32 mono chunks at `in_rate` -> float32 mono chunks at `out_rate`, with av (libswresample).

    One per stream: the filter keeps its history between pushes, so a stream resampled piece by piece joins
    without clicks and equals resampling it whole (up to the filter's delay, which `flush` drains at the end).
    Equal rates pass samples through untouched.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise AudioInputError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate, self.out_rate = in_rate, out_rate
        self._resampler = self._make() if in_rate != out_rate else None

    def _make(self) -> Any:
        import av  # the serve extra; imported here so the model package imports without it

        return av.AudioResampler(format="fltp", layout="mono", rate=self.out_rate)

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """The next mono chunk [N] (float32 in [-1, 1], or int16); returns the samples ready [M]."""
        if pcm.ndim != 1:
            raise AudioInputError(f"expected mono samples [N], got shape {tuple(pcm.shape)}")
        x = to_float32(pcm)
        if self._resampler is None or x.size == 0:  # av fails on an empty frame: nothing to do
            return x
        import av

        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, :]), format="fltp", layout="mono")
        frame.sample_rate = self.in_rate
        return _join(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples still inside the filter's delay line; the resampler then starts a new stream."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        out = _join(self._resampler.resample(None))
        self._resampler = self._make()
        return out


def _join(frames: list[Any]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.float32)
    return np.concatenate([f.to_ndarray()[0] for f in frames]).astype(np.float32, copy=False)


def resample(pcm: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """A whole mono clip [N] at `in_rate` -> float32 [M] at `out_rate` (the filter's tail included)."""
    r = StreamingResampler(in_rate, out_rate)
    return np.concatenate([r.push(pcm), r.flush()])
