"""Streaming Code2Wav: PCM from the first codec frame, equal to the whole-sequence decode.

The Talker emits one frame (16 codes, 80 ms of audio) per step. Frames are buffered until a chunk is due
(`first_chunk_frames` for the first, `chunk_frames` after) and then decoded together through the cached
state of `Code2Wav.step` (per-layer KV of the last window - 1 frames, every causal conv's input tail), so
the chunks concatenate to exactly the whole decode: no left-context re-decoding, nothing approximate.
Larger chunks only batch the work (fewer, larger matmuls); they never change the audio.

There is no approximate "re-decode with left context" mode (transformers' `chunked_decode`, vLLM-Omni's
25 + 25 frames): it would cost more, every chunk decoding its context again, and is exact only with at least
8 * 71 = 568 frames of context plus the convs' reach (tests/model/test_code2wav.py measures both).

Sizes: the first chunk of k frames holds k * 1920 - 555 samples (one frame: 1365 = 57 ms), later chunks
1920 per frame; `flush` decodes what is still buffered, so the total is the whole decode's length.

Sessions batched: `push` / `finish` say when a stream has a chunk due (its buffered frames), and `decode` takes
the due chunks of many streams at once, one `Code2Wav.step_rows` call (right-padded rows, each masked to its own
frames and KV window, its conv states kept to its own columns), each chunk what it is alone to float rounding
(tests/model/test_code2wav_batch.py). The omni engine's pooled Qwen3 sessions hand their chunks to the device
worker as `PoolStep`s with a shared streamer as the pool (`run_pool_steps`, omni/model/lm/batch.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch

from omni.model.code2wav.model import Code2Wav, Code2WavState
from omni.model.lm.batch import PoolStep
from omni.model.token2wav.streaming import PCMChunk


@dataclass
class Code2WavStreamState:
    """One reply of one session: the decoder's state and the frames waiting for their chunk."""

    decoder: Code2WavState
    pending: list[torch.Tensor] = field(default_factory=list)  # [1, Q, n] pieces not yet decoded
    pending_frames: int = 0
    finished: bool = False


class StreamingCode2Wav:
    """Chunked exact decoding over a shared `Code2Wav` (weights); per-reply data lives in Code2WavStreamState."""

    def __init__(self, model: Code2Wav, first_chunk_frames: int = 1, chunk_frames: int = 1) -> None:
        if first_chunk_frames < 1 or chunk_frames < 1:
            raise ValueError(f"chunks must hold at least one frame, got {first_chunk_frames}, {chunk_frames}")
        self.model = model
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames

    def init_state(self) -> Code2WavStreamState:
        return Code2WavStreamState(self.model.init_state(1))

    def step(self, state: Code2WavStreamState, codes: torch.Tensor) -> list[PCMChunk]:
        """Push frames `codes` [Q, n] (or [Q] for one frame); returns the chunk they complete, if any."""
        return self.decode([state])[0] if self.push(state, codes) else []

    def flush(self, state: Code2WavStreamState) -> list[PCMChunk]:
        """End of the reply: decode the buffered frames (the whole decode has no further samples)."""
        return self.decode([state])[0] if self.finish(state) else []

    def push(self, state: Code2WavStreamState, codes: torch.Tensor) -> bool:
        """Buffer frames `codes` [Q, n] (or [Q]); True when the stream's next chunk is due (`decode` it)."""
        if state.finished:
            raise ValueError("step after flush: start a new stream with init_state()")
        frames = codes[:, None] if codes.dim() == 1 else codes
        if frames.dim() != 2:
            raise ValueError(f"codes must be [codebooks, frames] or [codebooks], got shape {tuple(codes.shape)}")
        frames = frames[None]
        self.model.check_codes(frames, 1)
        state.pending.append(frames)
        state.pending_frames += frames.shape[-1]
        return state.pending_frames >= (self.first_chunk_frames if state.decoder.frames == 0 else self.chunk_frames)

    def finish(self, state: Code2WavStreamState) -> bool:
        """End of the reply's frames; True when some are still buffered (their chunk: `decode` it)."""
        if state.finished:
            raise ValueError("flush called twice: start a new stream with init_state()")
        state.finished = True
        return state.pending_frames > 0

    def run_pool_steps(self, steps: Sequence[PoolStep]) -> list[list[PCMChunk]]:
        """The due chunks (`PoolStep.item`, a `Code2WavStreamState` each) of several sessions as one `decode`
        (omni/model/lm/batch.py `run_steps` calls this for the steps that name this streamer as their pool)."""
        return self.decode([cast(Code2WavStreamState, st.item) for st in steps])

    @torch.inference_mode()
    def decode(self, states: Sequence[Code2WavStreamState]) -> list[list[PCMChunk]]:
        """The buffered frames of each stream (distinct streams, each with some) as one chunk: one
        `Code2Wav.step_rows` call; one stream is the plain unbatched `step`. Per stream: its chunk ([] when the
        frames complete no sample yet)."""
        if any(not s.pending_frames for s in states):
            raise ValueError("a stream with no buffered frames has no chunk to decode")
        codes = []
        for s in states:
            codes.append(torch.cat(s.pending, dim=-1))
            s.pending.clear()
            s.pending_frames = 0
        starts = [s.decoder.samples for s in states]
        wavs = self.model.step_rows([s.decoder for s in states], codes)
        return [[PCMChunk(start, wav)] if wav.numel() else [] for start, wav in zip(starts, wavs, strict=True)]
