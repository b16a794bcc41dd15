"""Audio front-end of the Thinker: any PCM -> 16 kHz mono (omni.model.pcm) -> Whisper log-mel (128 bins, 25 ms / 10 ms).

Numerics follow transformers' `WhisperFeatureExtractor` as the Qwen2.5-Omni processor calls it
(`padding="max_length"`, i.e. the clip is zero-padded to 30 s before the STFT): a periodic Hann window of
400 samples (25 ms), hop 160 (10 ms), reflect padding of 200 samples at the start only (the end sees the
zero padding), power spectrum, Slaney mel filters 0-8 kHz, log10 floored at 1e-10, then floored again at
(clip max - 8) i.e. 80 dB of dynamic range, and mapped with (x + 4) / 4. A clip of n samples gives
ceil(n / 160) frames.

Streaming (`LogMel.step`) emits each frame as soon as its 25 ms window is complete (200 samples = 12.5 ms
after its centre). Its only difference from offline is the 80 dB floor, which offline takes from the
loudest frame of the whole clip and streaming from the loudest frame so far: bins more than 80 dB below a
*later* peak are floored higher offline. Every other value is the same computation on the same samples.
`step_log10`/`flush_log10` give the frames before that floor, so that a consumer that keeps them
(`ThinkerSession.push_audio`) can floor them again with `finish` once the peak rises, and equal offline.

Qwen3-Omni's processor calls the same extractor with `padding=True` (pad to the longest clip of the batch,
no 30-s padding). For one clip that means `torch.stft`'s reflect padding at *both* ends, n // 160 frames
(the extractor drops the STFT's last frame) and the 80 dB floor over those frames: `LogMel.unpadded`
offline, `flush_log10(state, reflect_end=True)` when streaming. Only the last frame differs from the
zero-padded variant, when its window runs past the end (n % 160 < 40), plus the floor if that moves the peak.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from omni.model.pcm import AudioInputError, StreamingResampler, downmix, resample, to_float32

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop
N_MELS = 128
_HALF = N_FFT // 2  # 200 samples of centre padding
_LOG_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0  # log10 units = 80 dB


# ---- any PCM -> 16 kHz mono (omni.model.pcm: the one down-mix and resampler, shared with the live path) ----------


def to_mono_16k(samples: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Down-mix `samples` ([N] mono or [C, N] channels-first, float in [-1, 1] or int16) to mono by the
    channel mean, then resample to 16 kHz. Returns float32 [M]."""
    x = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    if x.ndim not in (1, 2):
        raise AudioInputError(f"audio must be [samples] or [channels, samples], got shape {tuple(x.shape)}")
    if x.size == 0:
        raise AudioInputError("zero-length audio: expected at least one sample")
    if sample_rate <= 0:
        raise AudioInputError(f"sample_rate must be positive, got {sample_rate}")
    mono = downmix(to_float32(x if x.ndim == 2 else x[None]))
    return torch.from_numpy(np.ascontiguousarray(resample(mono, sample_rate, SAMPLE_RATE)))


def load_audio(path: str | Path) -> torch.Tensor:
    """Decode the first audio stream of a file (any container/codec av reads) to 16 kHz mono float32 [N]."""
    import av

    try:
        container = av.open(str(path))
    except (OSError, av.error.FFmpegError) as e:
        raise AudioInputError(f"cannot open audio file {str(path)!r}: {e}") from e
    with container:
        if not container.streams.audio:
            raise AudioInputError(f"{str(path)!r} has no audio stream")
        stream = container.streams.audio[0]
        # av only converts the decoder's sample format to planar float here (same layout, same rate)
        to_planar = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.sample_rate)
        to_16k = StreamingResampler(stream.sample_rate, SAMPLE_RATE)
        chunks = [to_16k.push(downmix(f.to_ndarray())) for frame in container.decode(stream)
                  for f in to_planar.resample(frame)]
        chunks += [to_16k.push(downmix(f.to_ndarray())) for f in to_planar.resample(None)]
        chunks.append(to_16k.flush())
    if sum(c.size for c in chunks) == 0:
        raise AudioInputError(f"zero-length audio: {str(path)!r} decodes to no samples")
    return torch.from_numpy(np.concatenate(chunks))


# ---- log-mel ---------------------------------------------------------------------------------------------


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    # Slaney: linear below 1 kHz (3 mel / 200 Hz), logarithmic above (27 mel per factor 6.4).
    lin = 3.0 * f / 200.0
    log = 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    lin = 200.0 * m / 3.0
    log = 1000.0 * np.exp(np.log(6.4) * (m - 15.0) / 27.0)
    return np.where(m >= 15.0, log, lin)


def mel_filter_bank(
    n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE, f_max: float = 8000.0
) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filters [n_fft // 2 + 1, n_mels] (float32), 0 Hz..f_max."""
    n_freqs = n_fft // 2 + 1
    fft_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    mel_pts = np.linspace(_hz_to_mel_slaney(np.array(0.0)), _hz_to_mel_slaney(np.array(f_max)), n_mels + 2)
    hz_pts = _mel_to_hz_slaney(mel_pts)
    slopes = hz_pts[None, :] - fft_freqs[:, None]  # [F, n_mels + 2]
    diff = np.diff(hz_pts)
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb *= (2.0 / (hz_pts[2 : n_mels + 2] - hz_pts[:n_mels]))[None, :]  # equal energy per filter
    return torch.from_numpy(fb.astype(np.float32))


def mel_frame_count(n_samples: int) -> int:
    """Mel frames for a clip of `n_samples` 16 kHz samples: one per started 10 ms hop."""
    return math.ceil(n_samples / HOP_LENGTH)


@dataclass
class LogMelState:
    """Per-stream front-end state: the padded samples not yet consumed by a complete frame."""

    carry: torch.Tensor  # [N_FFT] padded samples still needed by the next frame (first n_carry valid)
    head: torch.Tensor  # [_HALF + 1] the first 201 samples: the start reflection needs x[1..200]
    tail: torch.Tensor  # [_HALF + 1] the last 201 samples (first n_tail valid): the end reflection needs them
    n_tail: int = 0
    n_carry: int = 0
    n_seen: int = 0  # input samples so far
    n_frames: int = 0  # frames emitted so far
    running_max: float = -math.inf  # loudest log10 mel value so far (sets the 80 dB floor)


class LogMel(nn.Module):
    """Whisper log-mel features; holds only constant buffers (filters, window), shared by all sessions."""

    filters: torch.Tensor  # [201, n_mels]
    window: torch.Tensor  # [400]

    def __init__(self, n_mels: int = N_MELS) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.register_buffer("filters", mel_filter_bank(n_mels), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)  # periodic, as torch.stft

    def _log_power(self, padded: torch.Tensor, n_frames: int) -> torch.Tensor:  # [P] -> [T, n_mels]
        frames = padded.unfold(0, N_FFT, HOP_LENGTH)[:n_frames]  # [T, 400]
        spec = torch.fft.rfft(frames * self.window, dim=-1)  # [T, 201]
        power = spec.real.square() + spec.imag.square()
        return (power @ self.filters).clamp_(min=_LOG_FLOOR).log10_()

    @staticmethod
    def finish(log10_mel: torch.Tensor, peak: float) -> torch.Tensor:  # [M, T] -> [M, T]
        """Floor log10 mel values at `peak` - 8 (80 dB below the loudest value) and map them with (x + 4) / 4."""
        return (torch.clamp(log10_mel, min=peak - _DYNAMIC_RANGE) + 4.0) / 4.0

    @staticmethod
    def _reflect_pad(x: torch.Tensor) -> torch.Tensor:  # [N >= 201] -> [200 + N]: torch.stft's centre pad
        return torch.cat([x[1 : _HALF + 1].flip(0), x])

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        """Offline features of a whole clip: 16 kHz mono float [N] -> [n_mels, ceil(N / 160)]."""
        log_mel = self._whole_log10(pcm)
        return self.finish(log_mel[:, : mel_frame_count(pcm.numel())], float(log_mel.max()))

    def unpadded(self, pcm: torch.Tensor) -> torch.Tensor:
        """Offline features as Qwen3-Omni's processor computes them for one clip (no 30-s padding): reflect
        padding at both ends, 16 kHz mono float [N > 200] -> [n_mels, N // 160]."""
        log_mel = self.unpadded_log10(pcm)
        return self.finish(log_mel, float(log_mel.max()))

    def unpadded_log10(self, pcm: torch.Tensor) -> torch.Tensor:
        """As `unpadded`, before the 80 dB floor."""
        n = self._check_pcm(pcm)
        if n <= _HALF:
            raise AudioInputError(
                f"audio of {n} samples is too short: the reflect padding needs more than {_HALF} (12.5 ms)"
            )
        x = pcm.float()
        padded = torch.cat([x[1 : _HALF + 1].flip(0), x, x[-_HALF - 1 : -1].flip(0)])
        return self._log_power(padded, n // HOP_LENGTH).T

    def _whole_log10(self, pcm: torch.Tensor) -> torch.Tensor:  # [N] -> [n_mels, frames touching the clip]
        n = self._check_pcm(pcm)
        # The 80 dB floor follows the reference's max over every frame whose window touches the clip,
        # including up to two frames past the last returned one (their windows reach 200 samples back).
        n_ext = (n + _HALF - 1) // HOP_LENGTH + 1
        need = max((n_ext - 1) * HOP_LENGTH + _HALF, _HALF + 1)
        x = torch.zeros(need, dtype=torch.float32, device=pcm.device)
        x[:n] = pcm.float()
        return self._log_power(self._reflect_pad(x), n_ext).T

    @staticmethod
    def _check_pcm(pcm: torch.Tensor) -> int:
        if pcm.dim() != 1:
            raise AudioInputError(f"expected 16 kHz mono PCM of shape [samples], got {tuple(pcm.shape)}")
        if pcm.numel() == 0:
            raise AudioInputError("zero-length audio: expected at least one 16 kHz sample")
        return pcm.numel()

    # ---- streaming ---------------------------------------------------------------------------------------

    def init_state(self, device: torch.device | str | None = None) -> LogMelState:
        return LogMelState(
            carry=torch.zeros(N_FFT, device=device),
            head=torch.zeros(_HALF + 1, device=device),
            tail=torch.zeros(_HALF + 1, device=device),
        )

    def step(self, state: LogMelState, pcm: torch.Tensor) -> torch.Tensor:
        """Feed 16 kHz mono samples [n] (any n >= 0); returns the frames completed by them [n_mels, t], floored
        80 dB below the loudest value so far."""
        return self.finish(self.step_log10(state, pcm), state.running_max)

    def step_log10(self, state: LogMelState, pcm: torch.Tensor) -> torch.Tensor:
        """As `step`, but the frames' log10 mel values before the 80 dB floor [n_mels, t]; `state.running_max`
        is the loudest of them so far."""
        if pcm.dim() != 1:
            raise AudioInputError(f"expected 16 kHz mono PCM of shape [samples], got {tuple(pcm.shape)}")
        pcm = pcm.float().to(state.carry.device)
        n_head = min(pcm.numel(), max(0, _HALF + 1 - state.n_seen))
        state.head[state.n_seen : state.n_seen + n_head] = pcm[:n_head]
        before, state.n_seen = state.n_seen, state.n_seen + pcm.numel()
        self._keep_tail(state, pcm)
        if state.n_seen <= _HALF:
            return self._empty(pcm.device)
        if before <= _HALF:  # the start reflection is known now: the padded stream begins
            pcm = self._reflect_pad(torch.cat([state.head[:before], pcm]))
        return self._consume(state, pcm, final=False)

    def flush(self, state: LogMelState, reflect_end: bool = False) -> torch.Tensor:
        """End of stream: the remaining frames (the tail sees zeros, as offline; or is reflected with
        `reflect_end`, as `unpadded`); resets the state."""
        out = self.finish(self.flush_log10(state, reflect_end), state.running_max)
        self._reset(state)
        return out

    def flush_log10(self, state: LogMelState, reflect_end: bool = False) -> torch.Tensor:
        """As `flush`, but the frames before the 80 dB floor; `state.running_max` then holds the stream's
        loudest value. The state is spent: the next stream needs a new one (`init_state`).

        `reflect_end=True` ends the stream as `unpadded` (Qwen3-Omni) does: the end is reflected and the
        stream has n // 160 frames in all."""
        if state.n_seen == 0:
            raise AudioInputError("zero-length audio: flush() before any sample was fed")
        if reflect_end:
            if state.n_seen <= _HALF:
                raise AudioInputError(
                    f"audio of {state.n_seen} samples is too short: the reflect padding needs more than {_HALF}"
                )
            mirror = state.tail[: state.n_tail][-_HALF - 1 : -1].flip(0)
            return self._consume(state, mirror, final=True, total=state.n_seen // HOP_LENGTH)
        if state.n_seen > _HALF:
            return self._consume(state, torch.zeros(N_FFT, device=state.carry.device), final=True)
        log_mel = self._whole_log10(state.head[: state.n_seen])  # nothing emitted yet: compute it as offline
        state.running_max = max(state.running_max, float(log_mel.max()))
        return log_mel[:, : mel_frame_count(state.n_seen)].contiguous()

    @staticmethod
    def _keep_tail(state: LogMelState, pcm: torch.Tensor) -> None:
        keep = torch.cat([state.tail[: state.n_tail], pcm])[-(_HALF + 1) :]
        state.tail[: keep.numel()] = keep
        state.n_tail = keep.numel()

    def _consume(
        self, state: LogMelState, padded_new: torch.Tensor, final: bool, total: int | None = None
    ) -> torch.Tensor:
        buf = torch.cat([state.carry[: state.n_carry], padded_new])
        if final:
            n_frames = (mel_frame_count(state.n_seen) if total is None else total) - state.n_frames
        else:
            n_frames = max(0, (buf.numel() - N_FFT) // HOP_LENGTH + 1)
        if n_frames == 0:
            out = self._empty(buf.device)
        else:
            log_mel = self._log_power(buf, n_frames)
            state.running_max = max(state.running_max, float(log_mel.max()))
            out = log_mel.T.contiguous()
        rest = buf[n_frames * HOP_LENGTH :][:N_FFT]  # < 400 samples remain in streaming
        state.carry[: rest.numel()] = rest
        state.n_carry = rest.numel()
        state.n_frames += n_frames
        return out

    def _empty(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.n_mels, 0, device=device)

    @staticmethod
    def _reset(state: LogMelState) -> None:
        state.n_carry = state.n_seen = state.n_frames = state.n_tail = 0
        state.running_max = -math.inf


def check_mel(mel: torch.Tensor, n_mels: int) -> None:
    """An encoder's input: log-mel features [n_mels, frames] with at least one frame."""
    if mel.dim() != 2 or mel.shape[0] != n_mels:
        raise AudioInputError(f"expected log-mel features [{n_mels}, frames], got {tuple(mel.shape)}")
    if mel.shape[1] == 0:
        raise AudioInputError("zero-length audio: expected at least one mel frame (10 ms)")


def whole_blocks(mel: torch.Tensor, block: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`mel` [n_mels, T] cut into its whole blocks [n, n_mels, block] (they share a length, so they batch) and the
    partial rest [n_mels, T % block]; None for either part that is empty."""
    n_full = mel.shape[1] // block
    full = mel[:, : n_full * block].unflatten(1, (n_full, block)).transpose(0, 1) if n_full else None
    rest = mel[:, n_full * block :] if mel.shape[1] % block else None
    return full, rest


class PendingMel(Protocol):
    pending: torch.Tensor  # [n_mels, block] preallocated; the first n_pending columns are valid
    n_pending: int


def fill_blocks(state: PendingMel, mel: torch.Tensor) -> Iterator[torch.Tensor]:
    """Stream mel frames [n_mels, t] (t >= 0) into `state.pending`; yields the buffer [n_mels, block] each time it
    fills (encode it before resuming: the next frames overwrite it). Raises for a wrong shape."""
    n_mels, block = state.pending.shape
    if mel.dim() != 2 or mel.shape[0] != n_mels:
        raise AudioInputError(f"expected [{n_mels}, frames] mel features, got {tuple(mel.shape)}")
    pos = 0
    while pos < mel.shape[1]:
        take = min(block - state.n_pending, mel.shape[1] - pos)
        state.pending[:, state.n_pending : state.n_pending + take] = mel[:, pos : pos + take]
        state.n_pending += take
        pos += take
        if state.n_pending == block:
            state.n_pending = 0
            yield state.pending
