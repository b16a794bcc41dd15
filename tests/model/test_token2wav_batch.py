"""Streaming token2wav chunks of several sessions decoded as one batch (`StreamingToken2Wav.decode` with many
jobs: one ragged DiT solve, vocoder calls grouped by length) give each session the chunks it gets alone.

Sessions differ in speaker, noise, codes and length, and start at different times, so batches mix first
chunks, later chunks and last (flush) chunks of different sizes. Float32 on the CPU: the batched chunk equals
the lone one to float rounding. Measured on this tiny random model: the batched DiT's mel is within 1.2e-6 of
the lone one (max |mel| 7.5); the vocoder's convolutions round differently at batch size 2 than 1 (the same
input twice in one call: 1.7e-5 apart), and float32 vs float64 of the lone path differ by 1.2e-5 in the samples.
The bound, 1e-4, is a few times that; a mask that lets a row see another's padding moves samples by 0.39.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omni.model.loaders.talker_weights import load_speech
from omni.model.token2wav import Token2Wav
from omni.model.token2wav.solver import SolverConfig
from omni.model.token2wav.streaming import ChunkJob, PCMChunk, StreamingSchedule, StreamingToken2Wav, Token2WavState
from tests.model.tiny_speech import hf_talker, hf_token2wav, tiny_voices, write_speech_checkpoint

TOL = 1e-4


@pytest.fixture(scope="module")
def t2w(tmp_path_factory: pytest.TempPathFactory) -> Token2Wav:
    d: Path = write_speech_checkpoint(tmp_path_factory.mktemp("t2wb"), hf_talker(), hf_token2wav(seed=2), tiny_voices())
    return load_speech(d).token2wav


def _sessions(st: StreamingToken2Wav, lengths: list[int]) -> list[tuple[Token2WavState, torch.Tensor]]:
    voice = tiny_voices().get()
    out = []
    for i, n in enumerate(lengths):
        g = torch.Generator().manual_seed(100 + i)
        cond = voice.cond + 0.5 * torch.randn(voice.cond.shape, generator=g)
        ref = voice.ref_mel + 0.5 * torch.randn(voice.ref_mel.shape, generator=g)
        state = st.init_state(cond, ref, seed=7 + i, max_codes=max(lengths))
        out.append((state, torch.randint(0, 64, (n,), generator=g)))
    return out


def _alone(st: StreamingToken2Wav, lengths: list[int]) -> list[list[PCMChunk]]:
    out = []
    for state, codes in _sessions(st, lengths):
        chunks = [c for k in range(codes.numel()) for c in st.step(state, codes[k : k + 1])]
        out.append(chunks + st.flush(state))
    return out


def _batched(st: StreamingToken2Wav, lengths: list[int], starts: list[int]) -> tuple[list[list[PCMChunk]], list[int]]:
    """One code per session per tick (session i from tick starts[i]); at each tick every due chunk of every
    session decodes as one batch. Returns the chunks and the size of each batch."""
    sessions = _sessions(st, lengths)
    out: list[list[PCMChunk]] = [[] for _ in sessions]
    sizes = []
    for tick in range(max(s + n for s, n in zip(starts, lengths)) + 1):
        jobs: list[tuple[int, ChunkJob]] = []
        for i, ((state, codes), s0) in enumerate(zip(sessions, starts)):
            k = tick - s0
            if 0 <= k < codes.numel():
                st.append(state, codes[k : k + 1])
            job = st.due(state) if k < codes.numel() else st.final(state)
            if job is not None:
                jobs.append((i, job))
        while jobs:  # a session with two chunks due gets its second in the next batch
            if jobs:
                sizes.append(len(jobs))
                for (i, _), chunk in zip(jobs, st.decode([j for _, j in jobs])):
                    out[i].append(chunk)
            jobs = [(i, j) for i, _ in jobs if (j := st.due(sessions[i][0])) is not None]
    return out, sizes


def _max_diff(a: list[list[PCMChunk]], b: list[list[PCMChunk]]) -> float:
    worst = 0.0
    for ca, cb in zip(a, b, strict=True):
        assert [c.start for c in ca] == [c.start for c in cb]
        for x, y in zip(ca, cb, strict=True):
            assert x.samples.shape == y.samples.shape
            worst = max(worst, float((x.samples - y.samples).abs().max()))
    return worst


@pytest.mark.parametrize("guidance", [0.5, 0.0])
def test_batched_chunks_equal_alone(t2w: Token2Wav, guidance: float) -> None:
    solver = SolverConfig(num_steps=4, guidance_scale=guidance)
    st = StreamingToken2Wav(t2w, StreamingSchedule(), solver)
    lengths, starts = [70, 47, 95, 30], [0, 0, 24, 40]  # the last one ends before its first mid-turn chunk
    alone = _alone(st, lengths)
    batched, sizes = _batched(st, lengths, starts)
    assert max(sizes) >= 2 and sum(s > 1 for s in sizes) >= 3, sizes  # the batches did mix sessions
    err = _max_diff(alone, batched)
    print(f"guidance {guidance}: batches {sizes}, max |batched - alone| = {err:.3g}")
    assert err < TOL


def test_ragged_batch_mixes_first_and_later_chunks(t2w: Token2Wav) -> None:
    """A first chunk (72-frame window) and a later chunk (120 frames) and a last chunk in one DiT solve."""
    st = StreamingToken2Wav(t2w, StreamingSchedule(), SolverConfig(num_steps=3))
    (a, ca), (b, cb), (c, cc) = _sessions(st, [90, 90, 41])
    st.append(a, ca[:60])
    alone_first = st.decode([j for j in [st.due(a)] if j is not None])  # a: chunk 0 alone
    st.append(b, cb[:36])
    st.append(c, cc)
    ref = [StreamingToken2Wav(t2w, st.schedule, st.solver) for _ in range(3)]
    jobs = [st.due(a), st.due(b), st.final(c)]
    assert all(j is not None for j in jobs)
    assert [j.state.chunk for j in jobs if j is not None] == [1, 0, 0]
    # the same chunks alone, from copies of the states
    copies = [_copy(j) for j in jobs if j is not None]
    want = [r.decode([cj])[0] for r, cj in zip(ref, copies)]
    got = st.decode([j for j in jobs if j is not None])
    assert alone_first and [g.samples.shape for g in got] == [w.samples.shape for w in want]
    for g, w in zip(got, want):
        assert float((g.samples - w.samples).abs().max()) < TOL
    with pytest.raises(ValueError, match="one chunk per turn"):
        st.decode([ChunkJob(a, 0, False), ChunkJob(a, 0, False)])


def _copy(job: ChunkJob) -> ChunkJob:
    s = job.state
    tail = None if s.mel_tail is None else s.mel_tail.clone()
    state = Token2WavState(s.codes.clone(), s.noise, s.speaker, s.n_codes, s.chunk, s.start, tail, s.samples_out,
                           s.finished)
    return ChunkJob(state, job.end, job.last)
