"""The streaming token2wav through `torch.compile` (OMNI_TOKEN2WAV_COMPILE, omni/model/token2wav/streaming.py) gives the
chunks the eager streamer gives: same boundaries, samples within 1e-4 (float32; measured 7.5e-8 on the speech
tests' tiny shapes, benchmarks/token2wav_compile.py; a wrong window or a row mix-up moves samples by ~0.1 and
more), for a lone turn and for two turns of different lengths decoded as one ragged batch.

Inductor compiles C++ on this CPU (minutes on a loaded machine for the full tiny model), so the model here is
smaller still: a 2-layer DiT and a one-stage vocoder, two ODE steps; the compiled code paths are the same.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from omni.model.token2wav import BigVGANConfig, DiTConfig, SolverConfig, Token2Wav, Token2WavConfig
from omni.model.token2wav.streaming import PCMChunk, StreamingSchedule, StreamingToken2Wav, compile_requested
from tests.model.tiny_speech import DIT

TOLERANCE = 1e-4
SCHEDULE = StreamingSchedule(first_chunk_blocks=1, chunk_blocks=1)
SOLVER = SolverConfig(num_steps=2)


@pytest.fixture(scope="module")
def model() -> Token2Wav:
    torch.manual_seed(0)
    dit = DiTConfig.from_hf_config(dict(DIT, num_hidden_layers=2, look_ahead_layers=[1], look_backward_layers=[0],
                                        block_size=8))
    voc = BigVGANConfig(upsample_initial_channel=16, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3, 5),),
                        upsample_rates=(4,), upsample_kernel_sizes=(8,))
    return Token2Wav(Token2WavConfig(dit, voc)).eval()


def _turns(streamer: StreamingToken2Wav, lengths: list[int]) -> list[list[PCMChunk]]:
    """Turns of these many codes, decoded together chunk by chunk (their due chunks as one batch)."""
    dcfg = streamer.model.cfg.dit
    g = torch.Generator().manual_seed(3)
    states = [streamer.init_state(torch.randn(1, dcfg.enc_emb_dim, generator=g),
                                  torch.randn(1, 40, dcfg.mel_dim, generator=g) - 5, seed=i, max_codes=n)
              for i, n in enumerate(lengths)]
    codes = [torch.randint(0, dcfg.num_embeds, (n,), generator=g).tolist() for n in lengths]
    out: list[list[PCMChunk]] = [[] for _ in lengths]
    turn_of = {id(st): i for i, st in enumerate(states)}
    with torch.inference_mode():
        for st, c in zip(states, codes, strict=True):
            streamer.append(st, c)
        while jobs := [j for st in states if (j := streamer.due(st)) is not None]:
            for j, chunk in zip(jobs, streamer.decode(jobs), strict=True):
                out[turn_of[id(j.state)]].append(chunk)
        last = [j for st in states if (j := streamer.final(st)) is not None]
        if last:
            for j, chunk in zip(last, streamer.decode(last), strict=True):
                out[turn_of[id(j.state)]].append(chunk)
    return out


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile (inductor) needs a C++ compiler on the CPU")
def test_compiled_chunks_equal_the_eager_ones(model: Token2Wav) -> None:
    eager = StreamingToken2Wav(model, SCHEDULE, SOLVER, compiled=False)
    compiled = StreamingToken2Wav(model, SCHEDULE, SOLVER, compiled=True)
    assert compiled.compiled and not eager.compiled
    assert compiled.warm_up(max_batch=2) > 0
    for lengths in ([30], [30, 21]):  # one turn; two of different lengths as one ragged batch
        want, got = _turns(eager, lengths), _turns(compiled, lengths)
        for w_turn, g_turn in zip(want, got, strict=True):
            assert [(c.start, c.samples.shape[0]) for c in g_turn] == [(c.start, c.samples.shape[0]) for c in w_turn]
            for w, c in zip(w_turn, g_turn, strict=True):
                torch.testing.assert_close(c.samples, w.samples, atol=TOLERANCE, rtol=0)
    again = StreamingToken2Wav(model, SCHEDULE, SOLVER, compiled=True)  # compiled once per model
    assert again._dit is compiled._dit and again._vocoder is compiled._vocoder


def test_the_environment_chooses_and_bad_values_are_refused(model: Token2Wav, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNI_TOKEN2WAV_COMPILE", raising=False)
    assert not compile_requested()
    plain = StreamingToken2Wav(model, SCHEDULE, SOLVER)
    assert not plain.compiled and plain.warm_up() == 0.0  # nothing to compile: nothing done
    monkeypatch.setenv("OMNI_TOKEN2WAV_COMPILE", "1")
    assert compile_requested() and StreamingToken2Wav(model, SCHEDULE, SOLVER).compiled  # (compiles lazily)
    assert not StreamingToken2Wav(model, SCHEDULE, SOLVER, compiled=False).compiled  # the argument wins
    monkeypatch.setenv("OMNI_TOKEN2WAV_COMPILE", "yes")
    with pytest.raises(ValueError, match="OMNI_TOKEN2WAV_COMPILE must be 0 or 1"):
        StreamingToken2Wav(model, SCHEDULE, SOLVER)
