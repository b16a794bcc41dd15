"""Streaming token2wav: PCM chunks while the Talker is still producing codes.

The schedule of the official Qwen2.5-Omni streaming code (shared/reference/qwen_omni.md section 1.9),
with the first chunk's size configurable:
* mel frames are cut into chunks at block boundaries (block = 24 frames = 12 codes = 240 ms); chunk k
  covers frames [s_k, e_k): the first `first_chunk_blocks` blocks, then `chunk_blocks` blocks each;
* chunk k is decoded once the codes of one block past it exist (the DiT looks one block ahead): the DiT
  solves the flow ODE on the window [s_k - 2 blocks, e_k + 1 block) alone (two blocks back is the DiT's
  receptive field) and keeps frames [s_k, e_k); the initial noise of every window is the same pre-drawn
  per-session tensor, sliced, so overlapping windows start from the same noise where they overlap;
* BigVGAN runs on the kept frames plus the last 40 frames kept before them, and the 20 frames (4800
  samples) at each inner edge are cut, so each chunk's audio overlaps the previous chunk's context only.
With the reference's 2-block first chunk, the first audio comes after 36 codes (0.72 s of speech) and holds
28 frames (280 ms); later chunks hold 480 ms.

Because a window's context frames evolve without their own history, streaming is not bit-equal to the
one-shot decode; tests/model/test_token2wav_streaming.py measures how close it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.token2wav import Token2Wav
from model.token2wav.solver import SolverConfig


@dataclass(frozen=True)
class StreamingSchedule:
    first_chunk_blocks: int = 2  # the reference: 2 (first audio after 36 codes)
    chunk_blocks: int = 2  # the official example's batched_chunk=2: 48 frames (480 ms) per chunk
    past_blocks: int = 2
    future_blocks: int = 1
    vocoder_context: int = 20  # mel frames of BigVGAN context cut at each inner chunk edge

    def __post_init__(self) -> None:
        if self.first_chunk_blocks < 1 or self.chunk_blocks < 1:
            raise ValueError("chunks must hold at least one block")
        if self.past_blocks < 0 or self.future_blocks < 0 or self.vocoder_context < 0:
            raise ValueError("context sizes must be >= 0")


@dataclass
class PCMChunk:
    """A piece of a reply's speech as token2wav makes it, on the model's device."""

    start: int  # index of the first sample in the turn's audio (24 kHz)
    samples: torch.Tensor  # [n] float32 in [-1, 1]


@dataclass
class Token2WavState:
    """One turn of one session: codes so far, the pre-drawn noise, and how far decoding got."""

    codes: torch.Tensor  # [1, max_codes] long, written in place
    noise: torch.Tensor  # [1, 2 * max_codes, mel] initial ODE state, drawn once
    speaker: tuple[torch.Tensor, torch.Tensor]  # DiT.speaker_rows of the voice
    n_codes: int = 0
    chunk: int = 0  # index of the next chunk to decode
    start: int = 0  # its first mel frame
    mel_tail: torch.Tensor | None = None  # [1, <= 2 * vocoder_context, mel] last kept frames
    samples_out: int = 0
    finished: bool = False


class StreamingToken2Wav:
    """Chunked decoding over a shared `Token2Wav` (weights); all per-turn data lives in Token2WavState."""

    def __init__(
        self, model: Token2Wav, schedule: StreamingSchedule | None = None, solver: SolverConfig | None = None
    ) -> None:
        self.model = model
        self.schedule = schedule or StreamingSchedule()
        self.solver = solver or SolverConfig()
        self.block = model.cfg.dit.block_size
        self.repeats = model.cfg.dit.repeats
        self.hop = model.cfg.bigvgan.hop

    @torch.inference_mode()
    def init_state(
        self,
        cond: torch.Tensor,
        ref_mel: torch.Tensor,
        seed: int | None = None,
        max_codes: int = 4096,
        noise: torch.Tensor | None = None,
    ) -> Token2WavState:
        """State for one spoken turn of up to `max_codes` codes (4096 = the Talker's limit, 82 s).

        noise [1, >= max_codes * repeats, mel] may be given (tests); otherwise it is drawn from `seed`.
        """
        dit = self.model.dit
        dev, dtype = dit.proj_out.weight.device, self.model.dtype
        frames = max_codes * self.repeats
        if frames > dit.cfg.max_position_embeddings:
            raise ValueError(f"max_codes {max_codes} exceeds the DiT's {dit.cfg.max_position_embeddings} mel frames")
        if noise is None:
            gen = torch.Generator(device=dev)
            gen.manual_seed(seed if seed is not None else torch.seed())
            noise = torch.randn(1, frames, dit.cfg.mel_dim, generator=gen, device=dev, dtype=dtype)
        elif noise.shape[1] < frames:
            raise ValueError(f"noise covers {noise.shape[1]} mel frames, need {frames}")
        return Token2WavState(
            codes=torch.zeros(1, max_codes, dtype=torch.long, device=dev),
            noise=noise[:, :frames].to(dev, dtype),
            speaker=dit.speaker_rows(cond.to(dev, dtype), ref_mel.to(dev, dtype)),
        )

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        """Mel frames [s, e) of chunk k (before the end of the turn truncates the last one)."""
        first, size = self.schedule.first_chunk_blocks * self.block, self.schedule.chunk_blocks * self.block
        s = 0 if k == 0 else first + (k - 1) * size
        return s, (first if k == 0 else s + size)

    def codes_needed(self, k: int) -> int:
        """Codes that must exist before chunk k can be decoded (mid-turn): its end plus the lookahead."""
        return -(-(self.chunk_bounds(k)[1] + self.schedule.future_blocks * self.block) // self.repeats)

    @torch.inference_mode()
    def step(self, state: Token2WavState, codes: Sequence[int] | torch.Tensor) -> list[PCMChunk]:
        """Append codes (talker codes 0..8191, no specials) and return the chunks that became decodable."""
        if state.finished:
            raise ValueError("step after flush: make a new state for the next turn")
        new = torch.as_tensor(codes, dtype=torch.long).reshape(-1)
        if state.n_codes + new.numel() > state.codes.shape[1]:
            raise ValueError(f"turn longer than max_codes={state.codes.shape[1]}")
        self.model.check_codes(new)
        state.codes[0, state.n_codes : state.n_codes + new.numel()] = new.to(state.codes.device)
        state.n_codes += new.numel()
        out = []
        while state.n_codes >= self.codes_needed(state.chunk):
            out.append(self._decode(state, self.chunk_bounds(state.chunk)[1], last=False))
        return out

    @torch.inference_mode()
    def flush(self, state: Token2WavState) -> list[PCMChunk]:
        """The turn's codes are complete: decode whatever remains."""
        if state.finished:
            return []
        state.finished = True
        total = state.n_codes * self.repeats
        return [self._decode(state, total, last=True)] if total > state.start else []

    def _decode(self, state: Token2WavState, end: int, last: bool) -> PCMChunk:
        sch, r = self.schedule, self.repeats
        s = state.start
        total = state.n_codes * r
        a = max(s - sch.past_blocks * self.block, 0)
        b = total if last else min(end + sch.future_blocks * self.block, total)
        dit = self.model.dit
        cond = dit.condition(state.codes[:, a // r : b // r], state.speaker)
        mel = self.model.solve(cond, state.noise[:, a:b], self.solver)[:, s - a : end - a]  # kept frames

        ctx = 2 * sch.vocoder_context
        tail = state.mel_tail if state.mel_tail is not None else mel[:, :0]
        voc_in = torch.cat([tail, mel], dim=1)
        wav = self.model.vocode(voc_in)[0]
        emit_from = max(s - sch.vocoder_context, 0)  # first mel frame whose samples this chunk emits
        lo = (emit_from - (s - tail.shape[1])) * self.hop
        hi = wav.shape[0] - (0 if last else sch.vocoder_context * self.hop)
        samples = wav[lo:hi].float()

        state.mel_tail = voc_in[:, -ctx:] if ctx else None
        state.chunk += 1
        state.start = end
        chunk = PCMChunk(start=state.samples_out, samples=samples)
        state.samples_out += samples.shape[0]
        return chunk
