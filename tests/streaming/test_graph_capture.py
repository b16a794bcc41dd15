"""CUDA graphs captured at the engine's start-up (omni/model/lm/cuda_graph.py, omni/model/lm/batch.py `capture_pools`).

There is no GPU where these tests run, so the capture itself is never exercised here: where a test needs the
engine to believe it is on CUDA it patches `graphs_enabled` (the one place that asks the device) and records
`StepGraphs.capture` calls instead of capturing, and says so. What the tests do check for real: every pool is
captured exactly once, before any session has a row in it; the seconds reach the start-up log line and the
server's /metrics; on the CPU and with OMNI_CUDA_GRAPHS=0 nothing is captured and nothing claims it was; a model
that reads back to the host in its step (int4 experts) is left eager with its reason; and a lone session's step
sent to a pool that replays graphs gives exactly the tokens it gets through its own forward.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, cast
from unittest import mock

import pytest
import torch

from omni.model.layers.quant_linear import quantize_decoder
from omni.model.lm import batch as batch_mod
from omni.model.lm.batch import BatchedDecoder, PoolStep, capture_pools, capture_report, run_steps
from omni.model.lm.config import DecoderConfig
from omni.model.lm.cuda_graph import GraphCapture, StepGraphs, graphs_enabled, host_read_reason
from omni.model.lm.decoder import DecoderLM
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.streaming.engines.omni import OmniEngine
from omni.streaming.metrics import ServerMetrics
from tests.streaming.test_omni_engine import SCHEDULE, SOLVER, Models, models  # noqa: F401

CACHE = CacheConfig(sinks=2, window=8, chunk=4)


def make(models: Models, max_sessions: int) -> OmniEngine:  # noqa: F811
    return OmniEngine(None, models=models, sampling=SamplingConfig(temperature=0.0, max_new_tokens=4), seed=0,
                      schedule=SCHEDULE, solver=SOLVER, max_sessions=max_sessions)


def test_the_engine_captures_every_pool_once_before_sessions_join(
    models: Models, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """Simulated CUDA (no GPU here): `graphs_enabled` patched True and `StepGraphs.capture` recorded, not run."""
    calls: list[tuple[int, tuple[int, ...], int]] = []  # (id of the StepGraphs, sizes, sessions in the pool then)

    def fake_capture(self: StepGraphs) -> float:
        owner = self.fn.__self__  # type: ignore[attr-defined]  # the pool whose `_device_step` this is
        calls.append((id(self), self.sizes, len(owner.sessions)))
        self.capture_seconds = {b: 0.25 for b in self.sizes}
        return sum(self.capture_seconds.values())

    with mock.patch.object(batch_mod, "graphs_enabled", return_value=True), \
            mock.patch.object(StepGraphs, "capture", fake_capture), caplog.at_level(logging.INFO):
        engine = make(models, max_sessions=3)
    assert engine.pools is not None
    pools = engine.pools.pools
    assert len(pools) == 2  # Qwen2.5-Omni: the Thinker's and the Talker's
    assert sorted(c[0] for c in calls) == sorted(id(p.graphs) for p in pools)  # each pool once
    assert all(c[2] == 0 for c in calls)  # no session held a row yet
    assert all(c[1] == (1, 2, 3) for c in calls)  # the graph sizes below 3, then 3 itself
    assert [(c.pool, c.sizes, c.seconds, c.skipped) for c in engine.graph_captures] == [
        ("thinker", (1, 2, 3), 0.75, None), ("talker", (1, 2, 3), 0.75, None)]
    lines = [r.getMessage() for r in caplog.records if "CUDA graphs" in r.getMessage()]
    assert lines == ["captured CUDA graphs: thinker 3 sizes 0.8 s, talker 3 sizes 0.8 s"]

    metrics = ServerMetrics()
    metrics.record_graph_captures(engine.graph_captures)
    page = metrics.render()
    assert "omni_cuda_graph_capture_seconds_thinker 0.75" in page
    assert "omni_cuda_graph_capture_seconds_talker 0.75" in page
    assert "omni_cuda_graph_batch_sizes_thinker 3" in page

    s = engine.open_session()  # sessions join afterwards, as ever
    assert len(pools[0].sessions) == 1
    s.close()


def test_on_the_cpu_nothing_is_captured_or_claimed(models: Models, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    with mock.patch.object(StepGraphs, "capture", side_effect=AssertionError("captured on the CPU")), \
            caplog.at_level(logging.INFO):
        engine = make(models, max_sessions=2)
    assert engine.graph_captures == []
    assert not [r for r in caplog.records if "graph" in r.getMessage().lower()]
    metrics = ServerMetrics()
    metrics.record_graph_captures(engine.graph_captures)
    assert "cuda_graph" not in metrics.render()


class _FakePool:
    """A pool that says its model is on CUDA (nothing is allocated there: the test never steps it)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.graphs = StepGraphs(lambda b: torch.zeros(b), (1, 2), torch.device("cuda"))
        self.captures = 0

    def capture_graphs(self) -> float:
        self.captures += 1
        return 0.5


class _OnCuda(torch.nn.Module):
    device = torch.device("cuda")


def test_graphs_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """OMNI_CUDA_GRAPHS=0 on a (pretended: `_FakePool`) CUDA device: nothing captured, and the log says graphs are
    off; without the variable the same pool is captured."""
    assert graphs_enabled(torch.device("cuda")) and not graphs_enabled(torch.device("cpu"))
    pool = _FakePool(_OnCuda())
    pools = {"thinker": cast(BatchedDecoder, pool)}
    monkeypatch.setenv("OMNI_CUDA_GRAPHS", "0")
    assert not graphs_enabled(torch.device("cuda"))
    assert capture_pools(pools) == [] and pool.captures == 0
    assert capture_report(pools, []) == "CUDA graphs off (OMNI_CUDA_GRAPHS=0): batched decode steps run eagerly"
    monkeypatch.delenv("OMNI_CUDA_GRAPHS")
    got = capture_pools(pools)
    assert got == [GraphCapture("thinker", (1, 2), 0.5)] and pool.captures == 1
    assert capture_report(pools, got) == "captured CUDA graphs: thinker 2 sizes 0.5 s"


def _moe(kind: str | None) -> DecoderLM:
    torch.manual_seed(0)
    cfg = replace(DecoderConfig.from_name("tiny"), num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    lm = DecoderLM(cfg).eval()
    if kind is not None:
        quantize_decoder(lm, kind)
    return lm


def test_a_model_that_reads_back_in_its_step_is_left_eager_with_its_reason() -> None:
    """int4 experts run one matmul per expert with tokens (their offsets read on the host): not capturable.
    Simulated CUDA for `capture_pools` (graphs_enabled patched); float and int8 experts stay capturable."""
    assert host_read_reason(_moe(None)) is None
    assert host_read_reason(_moe("int8")) is None
    int4 = _moe("int4")
    reason = host_read_reason(int4)
    assert reason is not None and "int4 experts read the routing offsets back to the host" in reason
    pool = BatchedDecoder(int4, max_sessions=2, cache=CACHE)
    with mock.patch.object(batch_mod, "graphs_enabled", return_value=True), \
            mock.patch.object(StepGraphs, "capture", side_effect=AssertionError("captured a host-reading step")):
        got = capture_pools({"thinker": pool})
        assert pool.capture_graphs() == 0.0  # called directly: eager too
    assert got == [GraphCapture("thinker", (), 0.0, reason)]
    assert got[0].describe().startswith("thinker not captured (layers.0.mlp.experts: int4 experts")
    assert not pool.graphed


def _greedy_lone_steps(model: DecoderLM, graphed: bool, prompt: list[int], n: int) -> tuple[list[int], int]:
    """One session in a pool, its decode steps as lone `PoolStep`s through `run_steps`; (tokens, steps the pool
    ran). `graphed`: the pool says it replays graphs (patched: nothing is captured on the CPU, so its step runs
    the same function eagerly, which is what a replay computes)."""
    pool = BatchedDecoder(model, max_sessions=2, cache=CACHE)
    sid = pool.open()
    state = pool.sessions[sid].state
    logits = model(state, input_ids=torch.tensor([prompt])).logits
    assert logits is not None
    tokens = [int(logits[0].argmax())]
    ran = 0
    real = pool.run_pool_steps

    def counted(steps: Any) -> list[Any]:
        nonlocal ran
        ran += 1
        return real(steps)

    def alone(tok: int) -> Any:
        out = model(state, input_ids=torch.tensor([[tok]]), return_hidden=True)
        return out.logits, out.hidden

    with mock.patch.object(StepGraphs, "captured", new_callable=mock.PropertyMock, return_value=graphed), \
            mock.patch.object(pool, "run_pool_steps", counted):
        while len(tokens) < n:
            tok = tokens[-1]
            (res,) = run_steps([PoolStep(pool, sid, tok, lambda tok=tok: alone(tok))])  # type: ignore[misc]
            assert not isinstance(res, BaseException), res
            tokens.append(int(res[0][0].argmax()))
    return tokens, ran


def test_a_lone_step_on_a_graphed_pool_runs_there_with_the_tokens_it_gets_alone() -> None:
    torch.manual_seed(0)
    model = DecoderLM(DecoderConfig.from_name("tiny")).eval()
    prompt = [5, 17, 42, 9, 100]
    alone, ran_alone = _greedy_lone_steps(model, False, prompt, 14)  # past the window of 8: the ring wraps
    pooled, ran_pooled = _greedy_lone_steps(model, True, prompt, 14)
    assert ran_alone == 0 and ran_pooled == 13
    assert pooled == alone


def test_a_lone_reply_on_a_graphed_pool_decodes_there_with_its_own_tokens() -> None:
    """The device worker's `StepBatcher` (tiny engine): one replying session on a pool that says it replays graphs
    (patched, as above) decodes through the pool, and its reply is the one it gives alone."""
    from omni.streaming.engine import ReplyDone
    from omni.streaming.engines.tiny import TinyLMEngine
    from omni.streaming.worker import NOT_DONE
    from tests.streaming.test_batched_sessions import GREEDY, alone, start
    from tests.streaming.test_tiny_engine import reply_text

    want = alone(1)
    engine = TinyLMEngine(**GREEDY, max_sessions=2)  # type: ignore[arg-type]
    assert engine.graph_captures == []  # the tiny engine's model lives on the CPU
    _, reply = start(engine, 1)
    decodes = 0
    real = engine.decoder.decode

    def counted(inputs: Any) -> torch.Tensor:
        nonlocal decodes
        decodes += 1
        return real(inputs)

    events: list[Any] = []
    with mock.patch.object(StepGraphs, "captured", new_callable=mock.PropertyMock, return_value=True), \
            mock.patch.object(engine.decoder, "decode", counted):
        while not events or not isinstance(events[-1], ReplyDone):
            (res,) = engine.batcher.run_batch([reply])
            if res is not NOT_DONE:
                events.append(res[0])
    assert reply_text(events) == want
    assert decodes >= GREEDY["min_new_tokens"] - 1  # every token after the prefill's first
    assert all(len(i.decoded) == 1 for i in engine.batcher.log if i.decoded)


def test_the_server_shows_the_engine_captures_in_metrics() -> None:
    """omni/app/realtime_server.py `Server` reads the engine's `graph_captures` at start (a stand-in engine)."""
    from omni.app.realtime_server import Server
    from omni.streaming.engines.tone import ToneEngine

    engine = ToneEngine()
    engine.graph_captures = [GraphCapture("thinker", (1, 2, 4), 1.5),  # type: ignore[attr-defined]
                             GraphCapture("predictor", (), 0.0, "int4 experts ...")]
    page = Server(engine).metrics.render()
    assert "omni_cuda_graph_capture_seconds_thinker 1.5" in page
    assert "omni_cuda_graph_batch_sizes_thinker 3" in page
    assert "omni_cuda_graph_batch_sizes_predictor 0" in page
    assert "cuda_graph" not in Server(ToneEngine()).metrics.render()


def test_the_engine_compiles_token2wav_at_start_up_only_when_asked(
    models: Models, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """`compile_token2wav` / OMNI_TOKEN2WAV_COMPILE: the warm-up (what compiles; recorded here, not run: compiling
    the tiny model takes minutes on this CPU, tests/model/test_token2wav_compile.py checks the compiled output)
    runs once at start-up, batched when sessions are pooled; every session's streamer is the compiled one."""
    from omni.model.token2wav.streaming import StreamingToken2Wav

    calls: list[tuple[bool, int]] = []

    def fake_warm_up(self: StreamingToken2Wav, max_batch: int = 1) -> float:
        calls.append((self.compiled, max_batch))
        return 1.5

    monkeypatch.setattr(StreamingToken2Wav, "warm_up", fake_warm_up)
    monkeypatch.delenv("OMNI_TOKEN2WAV_COMPILE", raising=False)
    assert make(models, max_sessions=2).token2wav_compile_s == 0.0 and calls == []  # default: off
    with caplog.at_level(logging.INFO):
        engine = OmniEngine(None, models=models, schedule=SCHEDULE, solver=SOLVER, max_sessions=2,
                            compile_token2wav=True)
    assert calls == [(True, 2)] and engine.token2wav_compile_s == 1.5
    assert "compiled the streaming token2wav (torch.compile) in 1.5 s" in caplog.text
    pooled, alone = engine.open_session(), OmniEngine(None, models=models, schedule=SCHEDULE, solver=SOLVER,
                                                      compile_token2wav=True).open_session()
    assert calls == [(True, 2), (True, 1)]  # the engine without pools warms a lone streamer up
    for s in (pooled, alone):
        assert s.speaking.streamer.compiled  # type: ignore[attr-defined]
        s.close()
    monkeypatch.setenv("OMNI_TOKEN2WAV_COMPILE", "1")
    assert make(models, max_sessions=0).compile_token2wav


def test_the_talker_pool_step_reads_nothing_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embeds=True pool (Talker, Qwen3 code predictor) captures the same `_device_step` with its input
    embeddings in a static buffer: no tensor -> Python value inside it (tests/model/test_batch.py checks the
    token-id pool the same way)."""
    torch.manual_seed(0)
    model = DecoderLM(DecoderConfig.from_name("tiny")).eval()
    pool = BatchedDecoder(model, max_sessions=2, cache=CACHE, embeds=True)
    sid = pool.open()
    x = torch.randn(1, 1, model.cfg.hidden_size)
    with torch.inference_mode():
        want = pool.decode({sid: x})  # [1, V]: fills the static buffers as a real step does

    def forbidden(*_: object) -> None:
        raise AssertionError("host read inside the device step")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    with torch.inference_mode():
        got = pool._device_step(1)  # the same step again (it rewrites the same slot), checked this time
    monkeypatch.undo()
    torch.testing.assert_close(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the capture and replay themselves "
                    "(never run where this was written: no GPU there)")
def test_on_cuda_replayed_steps_equal_eager_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three sessions joining at different times, greedy, float32: the tokens of a pool that replays its captured
    graphs are exactly those of the same pool run eagerly (OMNI_CUDA_GRAPHS=0), and a lone session's too."""
    torch.manual_seed(0)
    model = DecoderLM(DecoderConfig.from_name("tiny")).eval().cuda()
    prompts = [[5, 17, 42, 9, 100], [7, 7, 3], [200, 1, 2, 3, 4, 5, 6, 7, 8]]

    def run(graphs: bool) -> tuple[list[list[int]], bool]:
        monkeypatch.setenv("OMNI_CUDA_GRAPHS", "1" if graphs else "0")
        pool = BatchedDecoder(model, max_sessions=4, cache=CACHE)
        captures = capture_pools({"thinker": pool})
        assert [(c.pool, c.sizes, c.skipped) for c in captures] == ([("thinker", (1, 2, 4), None)] if graphs else [])
        sids = [pool.join(prompts[0], SamplingConfig(max_new_tokens=12))]
        for it in range(40):
            if it in (2, 5):
                sids.append(pool.join(prompts[len(sids)], SamplingConfig(max_new_tokens=12)))
            pool.step()
        return [pool.leave(s) for s in sids], pool.graphed

    with torch.inference_mode():
        replayed, graphed = run(True)
        eager, eager_graphed = run(False)
    assert graphed and not eager_graphed
    assert replayed == eager and all(len(t) == 12 for t in replayed)
