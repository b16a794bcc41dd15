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

Sessions batched: `append` / `due` / `final` say which chunk a turn can decode next (a `ChunkJob`), and `decode`
takes the due chunks of many turns at once: one ODE solve over all their DiT windows, right-padded to the
longest with each row's block mask kept to its own frames (dit.py `ragged_masks`), then one vocoder call per
group of equal input length (a padded vocoder input would change the samples near its end). Every chunk is
what it is alone, to float rounding (tests/model/test_token2wav_batch.py); the omni engine's pooled sessions
hand their chunks to the device worker as `PoolStep`s with this streamer as the pool (omni/model/lm/batch.py).

Compiled (`compiled=True`, or OMNI_TOKEN2WAV_COMPILE=1): the DiT's velocity evaluations and BigVGAN run through
`torch.compile` (inductor, dynamic shapes), the same chunks to ~1e-7 (tests/model/test_token2wav_compile.py).
Measured on a CPU (benchmarks/token2wav_compile.py): chunks 14-25% faster for 2-4 minutes of compiling, so it is
off by default. Not measured on a GPU; no CUDA graph of the chunk is captured (compile's "reduce-overhead" mode
would record one per shape, but the RK4 step keeps earlier velocity outputs alive across calls, which a replay
overwrites unless they are copied out: not tried without a GPU).
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch

from omni.model.lm.batch import PoolStep, pad_rows
from omni.model.token2wav import Token2Wav
from omni.model.token2wav.solver import SolverConfig

# Token2Wav -> its compiled (DiT, BigVGAN): compiled once per set of weights, whichever streamers use them
_COMPILED: weakref.WeakKeyDictionary[Token2Wav, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = (
    weakref.WeakKeyDictionary())


def compile_requested() -> bool:
    """OMNI_TOKEN2WAV_COMPILE=1: streamers compile the DiT and BigVGAN unless told otherwise (default off)."""
    value = os.environ.get("OMNI_TOKEN2WAV_COMPILE", "0")
    if value not in ("0", "1"):
        raise ValueError(f"OMNI_TOKEN2WAV_COMPILE must be 0 or 1, got {value!r}")
    return value == "1"


def compile_modules(model: Token2Wav) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """The DiT and BigVGAN of `model` through `torch.compile` (inductor, default mode, dynamic shapes: a chunk's
    window length and batch vary), made once per model. Compilation happens at the first call of each shape
    family, so `StreamingToken2Wav.warm_up` exists to pay it at start-up (2-4 minutes on a busy 2-core CPU)."""
    got = _COMPILED.get(model)
    if got is None:
        got = (torch.compile(model.dit, dynamic=True), torch.compile(model.bigvgan, dynamic=True))
        _COMPILED[model] = got
    return got


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


@dataclass
class ChunkJob:
    """The next chunk of one turn, ready to decode: mel frames [state.start, end) (`last`: the turn's end)."""

    state: Token2WavState
    end: int
    last: bool


class StreamingToken2Wav:
    """Chunked decoding over a shared `Token2Wav` (weights); all per-turn data lives in Token2WavState, so one
    instance can serve many sessions and batch their due chunks (`decode`; as a `StepPool` of `PoolStep`s)."""

    def __init__(
        self, model: Token2Wav, schedule: StreamingSchedule | None = None, solver: SolverConfig | None = None,
        compiled: bool | None = None,
    ) -> None:
        """`compiled`: the DiT and BigVGAN through `torch.compile` (see `compile_modules`; None: the
        OMNI_TOKEN2WAV_COMPILE environment variable, off unless it is 1)."""
        self.model = model
        self.schedule = schedule or StreamingSchedule()
        self.solver = solver or SolverConfig()
        self.block = model.cfg.dit.block_size
        self.repeats = model.cfg.dit.repeats
        self.hop = model.cfg.bigvgan.hop
        if compiled is None:
            compiled = compile_requested()
        self._dit: Callable[..., torch.Tensor] | None = None  # the compiled modules (None: the model's own, eager)
        self._vocoder: Callable[..., torch.Tensor] | None = None
        if compiled:
            self._dit, self._vocoder = compile_modules(model)

    @property
    def compiled(self) -> bool:
        return self._dit is not None

    def warm_up(self, max_batch: int = 1) -> float:
        """Decode a throw-away turn (zero codes and noise: its first, a steady and a last chunk; then `max_batch`
        turns' chunks together when > 1) so that a compiled streamer compiles now rather than in a user's first
        reply; seconds taken (0 when not compiled: nothing to do)."""
        if not self.compiled:
            return 0.0
        t0 = time.perf_counter()
        dit, dev = self.model.dit, self.model.dit.proj_out.weight.device
        cond = torch.zeros(1, dit.cfg.enc_emb_dim, device=dev)
        ref = torch.zeros(1, 2 * self.block, dit.cfg.mel_dim, device=dev)
        codes = self.codes_needed(1) + self.schedule.chunk_blocks * self.block // self.repeats // 2
        for n in sorted({1, max_batch}):
            states = [self.init_state(cond, ref, max_codes=codes, noise=torch.zeros(1, codes * self.repeats,
                                                                                    dit.cfg.mel_dim)) for _ in range(n)]
            for st in states:
                self.append(st, [0] * codes)
            while jobs := [j for st in states if (j := self.due(st)) is not None]:
                self.decode(jobs)
            if last := [j for st in states if (j := self.final(st)) is not None]:
                self.decode(last)
        return time.perf_counter() - t0

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
    def append(self, state: Token2WavState, codes: Sequence[int] | torch.Tensor) -> None:
        """Append codes (talker codes 0..8191, no specials) to the turn; `due` then says what became decodable."""
        if state.finished:
            raise ValueError("step after flush: make a new state for the next turn")
        new = torch.as_tensor(codes, dtype=torch.long).reshape(-1)
        if state.n_codes + new.numel() > state.codes.shape[1]:
            raise ValueError(f"turn longer than max_codes={state.codes.shape[1]}")
        self.model.check_codes(new)
        state.codes[0, state.n_codes : state.n_codes + new.numel()] = new.to(state.codes.device)
        state.n_codes += new.numel()

    def due(self, state: Token2WavState) -> ChunkJob | None:
        """The next chunk of the turn if its codes (and the lookahead) exist; decode it before asking again."""
        if state.finished or state.n_codes < self.codes_needed(state.chunk):
            return None
        return ChunkJob(state, self.chunk_bounds(state.chunk)[1], last=False)

    def final(self, state: Token2WavState) -> ChunkJob | None:
        """The turn's codes are complete: the chunk of whatever remains (None: nothing does). Ends the turn."""
        if state.finished:
            return None
        state.finished = True
        total = state.n_codes * self.repeats
        return ChunkJob(state, total, last=True) if total > state.start else None

    @torch.inference_mode()
    def step(self, state: Token2WavState, codes: Sequence[int] | torch.Tensor) -> list[PCMChunk]:
        """Append codes (talker codes 0..8191, no specials) and return the chunks that became decodable."""
        self.append(state, codes)
        out = []
        while (job := self.due(state)) is not None:
            out.extend(self.decode([job]))
        return out

    @torch.inference_mode()
    def flush(self, state: Token2WavState) -> list[PCMChunk]:
        """The turn's codes are complete: decode whatever remains."""
        job = self.final(state)
        return [] if job is None else self.decode([job])

    def run_pool_steps(self, steps: Sequence[PoolStep]) -> list[PCMChunk]:
        """The chunks (`PoolStep.item`, a `ChunkJob` each) of several sessions as one `decode` (omni/model/lm/batch.py
        `run_steps` calls this for the steps that name this streamer as their pool)."""
        return self.decode([cast(ChunkJob, st.item) for st in steps])

    @torch.inference_mode()
    def decode(self, jobs: Sequence[ChunkJob]) -> list[PCMChunk]:
        """Decode one chunk of each job (of different turns) and advance their states; one job is the plain
        unbatched path. Batched: one DiT solve over every window, right-padded to the longest (each row masked
        to its own frames), and one vocoder call per group of equal input length (its convolutions see the
        edges, so only equal lengths share a call). Each chunk is what it would be alone, to float rounding."""
        if len({id(j.state) for j in jobs}) != len(jobs):
            raise ValueError("one chunk per turn at a time: a turn's next chunk needs the previous one's mel")
        mels = self._mels(jobs)
        voc_in = []
        for job, mel in zip(jobs, mels, strict=True):
            tail = job.state.mel_tail if job.state.mel_tail is not None else mel[:, :0]
            voc_in.append(torch.cat([tail, mel], dim=1))
        by_len: dict[int, list[int]] = {}
        for i, v in enumerate(voc_in):
            by_len.setdefault(v.shape[1], []).append(i)
        wavs: list[torch.Tensor] = [voc_in[0]] * len(jobs)
        for ix in by_len.values():
            out = self.model.vocode(torch.cat([voc_in[i] for i in ix]), self._vocoder)
            for j, i in enumerate(ix):
                wavs[i] = out[j]
        return [self._emit(job, v, w) for job, v, w in zip(jobs, voc_in, wavs, strict=True)]

    def _window(self, job: ChunkJob) -> tuple[int, int]:
        """Mel frames [a, b) the DiT solves for the job's chunk (its past context and lookahead included)."""
        sch, state = self.schedule, job.state
        total = state.n_codes * self.repeats
        a = max(state.start - sch.past_blocks * self.block, 0)
        b = total if job.last else min(job.end + sch.future_blocks * self.block, total)
        return a, b

    def _mels(self, jobs: Sequence[ChunkJob]) -> list[torch.Tensor]:
        """Kept mel frames [1, end - start, mel] of each job's chunk, from one (batched) ODE solve."""
        r, dit = self.repeats, self.model.dit
        windows = [self._window(j) for j in jobs]
        conds = [dit.condition(j.state.codes[:, a // r : b // r], j.state.speaker) for j, (a, b) in zip(jobs, windows)]
        noises = [j.state.noise[:, a:b] for j, (a, b) in zip(jobs, windows)]
        if len(jobs) == 1:
            mel = self.model.solve(conds[0], noises[0], self.solver, dit=self._dit)
        else:
            cond = pad_rows([c[:1] for c in conds] + [c[1:] for c in conds], dim=1)[0]  # all conditioned rows first
            noise, lengths = pad_rows(noises, dim=1)
            mel = self.model.solve(cond, noise, self.solver, lengths, dit=self._dit)
        starts = [a for a, _ in windows]
        return [mel[i : i + 1, j.state.start - a : j.end - a] for i, (j, a) in enumerate(zip(jobs, starts))]

    def _emit(self, job: ChunkJob, voc_in: torch.Tensor, wav: torch.Tensor) -> PCMChunk:
        """The chunk's samples from the vocoder's output wav [n] of voc_in (mel tail + kept frames); advances
        the state."""
        sch, state, s = self.schedule, job.state, job.state.start
        tail = voc_in.shape[1] - (job.end - s)
        emit_from = max(s - sch.vocoder_context, 0)  # first mel frame whose samples this chunk emits
        lo = (emit_from - (s - tail)) * self.hop
        hi = wav.shape[0] - (0 if job.last else sch.vocoder_context * self.hop)
        samples = wav[lo:hi].float()

        ctx = 2 * sch.vocoder_context
        state.mel_tail = voc_in[:, -ctx:] if ctx else None
        state.chunk += 1
        state.start = job.end
        chunk = PCMChunk(start=state.samples_out, samples=samples)
        state.samples_out += samples.shape[0]
        return chunk
