"""Streaming mono resampling with av (libswresample), e.g. espeak-ng's 22,050 Hz to the 24,000 Hz output.

One `StreamingResampler` per stream: libswresample keeps its filter's history between pushes, so speech
resampled phrase by phrase joins without clicks and equals resampling the whole at once (up to the filter's
delay, which `flush` drains at the end of the stream).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["StreamingResampler", "resample"]


class StreamingResampler:
    """float32 mono chunks at `in_rate` -> float32 mono chunks at `out_rate`."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate, self.out_rate = in_rate, out_rate
        self._resampler = self._make() if in_rate != out_rate else None

    def _make(self) -> Any:
        import av  # the serve extra; imported here so the model package imports without it

        return av.AudioResampler(format="fltp", layout="mono", rate=self.out_rate)

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Resample the next chunk [N] (float32 in [-1, 1], or int16); returns what is ready [M]."""
        x = _as_float(pcm)
        if self._resampler is None or x.size == 0:
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


def _as_float(pcm: np.ndarray) -> np.ndarray:
    if pcm.ndim != 1:
        raise ValueError(f"expected mono samples [N], got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    return pcm.astype(np.float32, copy=False)


def _join(frames: list[Any]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.float32)
    return np.concatenate([f.to_ndarray()[0] for f in frames]).astype(np.float32, copy=False)


def resample(pcm: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """A whole clip [N] at `in_rate` -> float32 [M] at `out_rate`."""
    r = StreamingResampler(in_rate, out_rate)
    return np.concatenate([r.push(pcm), r.flush()])
