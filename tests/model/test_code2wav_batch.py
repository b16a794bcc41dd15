"""Streaming Code2Wav chunks of several sessions decoded as one batch (`StreamingCode2Wav.decode` with many streams:
one `Code2Wav.step_rows` call) give each session the chunks it gets alone.

Sessions start at different ticks, push one frame per tick, use different chunk sizes (1, 2 and 3 frames, first
chunks of 1 to 3) and end at different times, so the batches mix first chunks (fresh conv states, empty KV window),
later chunks (window partly and fully filled: window 3, so 0, 1 or 2 cached frames), chunks of different lengths
and a stream's last (flush) chunk. The model is the tiny random reference model of test_code2wav.py (GQA, biased
projections, 3 layers of window 3), with its waveform scaled inside the clamp.

Tolerances, from measurement: float64 batched vs alone differ by rounding only (measured 1.1e-13), asserted at
1e-10. float32 rounds differently at another batch shape: against the float64 decode, the lone float32 chunks are
off by 3.4e-5 and the batched ones by 3.8e-5 (a waveform of std 0.17), so batched vs alone differ by up to 5.3e-5;
asserted at 2e-4. Leaks measured with the code broken on purpose (float64): a mask that shows a row its cache slots
not yet filled moves samples by 0.85; a conv keeping its tail from the padded end of its row instead of its real
end, by 1.16; a KV window keeping padding keys, by 1.33.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omni.model.code2wav import Code2Wav, StreamingCode2Wav
from omni.model.token2wav.streaming import PCMChunk
from tests.model.test_code2wav import VARIANT, _save_and_load, hf_code2wav

TOL = {torch.float64: 1e-10, torch.float32: 2e-4}
# per session: (start tick, frames, first chunk frames, chunk frames)
SESSIONS = [(0, 14, 1, 1), (0, 9, 2, 3), (3, 11, 1, 2), (5, 4, 3, 1), (6, 13, 2, 2)]


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["float64", "float32"])
def c2w(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Code2Wav:
    d: Path = tmp_path_factory.mktemp("c2wb")
    return _save_and_load(hf_code2wav(VARIANT, seed=3), d, request.param)


def _codes(k: int, n: int) -> torch.Tensor:
    return torch.randint(0, VARIANT["codebook_size"], (VARIANT["num_quantizers"], n),
                         generator=torch.Generator().manual_seed(50 + k))


def _alone(model: Code2Wav) -> list[list[PCMChunk]]:
    out = []
    for k, (_, n, first, chunk) in enumerate(SESSIONS):
        st = StreamingCode2Wav(model, first, chunk)
        state, codes = st.init_state(), _codes(k, n)
        out.append([c for t in range(n) for c in st.step(state, codes[:, t])] + st.flush(state))
    return out


def _batched(model: Code2Wav) -> tuple[list[list[PCMChunk]], list[list[tuple[int, int, int]]]]:
    """One frame per session per tick; every chunk due at a tick decodes in one batch through one shared streamer.
    Returns the chunks and, per batch of two or more, (frames in the chunk, frames before it, last) of each row."""
    shared = StreamingCode2Wav(model)
    streamers = [StreamingCode2Wav(model, first, chunk) for _, _, first, chunk in SESSIONS]
    states = [s.init_state() for s in streamers]
    out: list[list[PCMChunk]] = [[] for _ in SESSIONS]
    batches = []
    for tick in range(max(t0 + n for t0, n, _, _ in SESSIONS) + 1):
        due: list[int] = []
        for k, ((t0, n, _, _), st, state) in enumerate(zip(SESSIONS, streamers, states, strict=True)):
            t = tick - t0
            if 0 <= t < n and st.push(state, _codes(k, n)[:, t]):
                due.append(k)
            elif t == n and st.finish(state):
                due.append(k)
        if not due:
            continue
        if len(due) > 1:
            batches.append([(states[k].pending_frames, states[k].decoder.frames, int(states[k].finished)) for k in due])
        for k, chunks in zip(due, shared.decode([states[k] for k in due]), strict=True):
            out[k].extend(chunks)
    return out, batches


def _max_diff(a: list[list[PCMChunk]], b: list[list[PCMChunk]]) -> float:
    worst = 0.0
    for ca, cb in zip(a, b, strict=True):
        assert [(c.start, c.samples.numel()) for c in ca] == [(c.start, c.samples.numel()) for c in cb]
        for x, y in zip(ca, cb, strict=True):
            worst = max(worst, float((x.samples.double() - y.samples.double()).abs().max()))
    return worst


def test_batched_chunks_equal_alone(c2w: Code2Wav) -> None:
    alone = _alone(c2w)
    wav = torch.cat([c.samples for chunks in alone for c in chunks]).abs()
    clamped = float((wav >= 1.0).double().mean())
    print(f"{c2w.dtype}: std {float(wav.std()):.3g}, clamped {clamped:.3g}")
    assert clamped < 0.05 and float(wav.std()) > 0.05  # a real waveform mostly inside the clamp
    got, batches = _batched(c2w)
    rows = [r for b in batches for r in b]
    assert len(batches) >= 8 and max(len(b) for b in batches) >= 4, batches
    assert any({r[1] == 0 for r in b} == {True, False} for b in batches)  # a first chunk with later ones
    assert any(len({r[0] for r in b}) > 1 for b in batches)  # chunks of different lengths
    assert {min(r[1], 2) for r in rows} == {0, 1, 2}  # KV window empty, partly and fully filled
    assert any(r[2] for r in rows)  # a stream's last (flush) chunk in a batch
    err = _max_diff(alone, got)
    print(f"{c2w.dtype}: {len(batches)} batches, widths {[len(b) for b in batches]}, max |batched - alone| {err:.3g}")
    assert err < TOL[c2w.dtype]


def test_a_lone_stream_runs_step_itself(c2w: Code2Wav, monkeypatch: pytest.MonkeyPatch) -> None:
    """One stream through `decode` is `Code2Wav.step` (the unbatched path), bit for bit."""
    st = StreamingCode2Wav(c2w, 2, 2)
    a, b = st.init_state(), st.init_state()
    codes = _codes(0, 6)
    want = [c for t in range(6) for c in st.step(a, codes[:, t])]
    calls: list[int] = []
    step = c2w.step
    monkeypatch.setattr(c2w, "step", lambda s, c: calls.append(c.shape[-1]) or step(s, c))
    got = []
    for t in range(6):
        if st.push(b, codes[:, t]):
            got.extend(st.decode([b])[0])
    assert calls == [2, 2, 2]
    assert all(torch.equal(x.samples, y.samples) for x, y in zip(want, got, strict=True)) and len(got) == 3


def test_bad_batches_are_refused(c2w: Code2Wav) -> None:
    st = StreamingCode2Wav(c2w)
    a, b = st.init_state(), st.init_state()
    st.push(a, _codes(0, 1))
    with pytest.raises(ValueError, match="no buffered frames"):
        st.decode([a, b])
    with pytest.raises(ValueError, match="one step per stream"):
        c2w.step_rows([a.decoder, a.decoder], [_codes(0, 1)[None]] * 2)
    with pytest.raises(ValueError, match=r"\[1, Q, n >= 1\]"):
        c2w.step_rows([a.decoder, b.decoder], [_codes(0, 1)[None], _codes(0, 1)[None, :, :0]])

