"""The omni engine's Qwen3-Omni sessions batched on the device: `OmniEngine(max_sessions=N)` on a tiny random Qwen3
checkpoint keeps the first N sessions' Thinker, Talker and code predictor caches in three pools (the MoE Thinker,
the MoE Talker decoder, the predictor), replies are `ModelReply`s, and `StepBatcher.run_batch` (what the device
worker calls) runs their decode steps as one forward per pool and their due Code2Wav chunks as one call of the
engine's shared `StreamingCode2Wav`. Each session's events must be those it gets from an engine without pools (greedy,
float32 on the CPU): text, codes and chunk sizes exactly, the PCM to float rounding (tests/model/test_qwen3_batch.py
PCM_TOL), with a session joining mid-reply, and after a barge-in of one of them; `omni serve --batch-sessions N`
makes the pools for a Qwen3 model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from omni.model.lm.sampling import SamplingConfig
from omni.model.qwen3.loader import LoadedQwen3, load_qwen3
from omni.model.qwen3.speech import Qwen3SpeechModels, load_qwen3_speech
from omni.model.qwen3.talker import GREEDY
from omni.streaming.batching import ModelReply
from omni.streaming.engine import AudioChunk, EngineEvent, ReplyDone, TextDelta
from omni.streaming.engines.omni import OmniEngine
from omni.streaming.worker import NOT_DONE
from tests.model.test_qwen3_batch import PCM_TOL
from tests.streaming.test_omni_batching import ask, drive, summary

TEXTS = ["hello there", "how is the weather in the mountains today", "bye now", "ok"]
TOKENS, FRAMES = 8, 12
Models = tuple[LoadedQwen3, Qwen3SpeechModels]


@pytest.fixture(scope="module")
def models(qwen3_tiny_dir: Path) -> Models:
    q = load_qwen3(qwen3_tiny_dir)
    return q, load_qwen3_speech(qwen3_tiny_dir, index=q.index)


def make(models: Models, max_sessions: int = 0) -> OmniEngine:
    return OmniEngine(None, models=models, sampling=SamplingConfig(temperature=0.0, max_new_tokens=TOKENS),
                      talker_sampling=dataclasses.replace(GREEDY, max_new_tokens=FRAMES), seed=0,
                      max_sessions=max_sessions)


def _counting(decode: Callable[[dict[int, Any]], torch.Tensor], widths: list[int]
              ) -> Callable[[dict[int, Any]], torch.Tensor]:
    def wrapped(inputs: dict[int, Any]) -> torch.Tensor:
        widths.append(len(inputs))
        return decode(inputs)

    return wrapped


def same_reply(got: tuple[Any, ...], want: tuple[Any, ...]) -> float:
    """Two `summary`s: all but the PCM equal; returns max |PCM difference| (float32 bytes, same length)."""
    assert got[:-1] == want[:-1]
    a, b = (np.frombuffer(x, np.float32) for x in (got[-1], want[-1]))
    assert a.shape == b.shape and len(b) > 0
    return float(np.abs(a - b).max())


def test_qwen3_voice_sessions_batched_say_what_each_says_alone(models: Models) -> None:
    want = {t: summary(list(ask(make(models), t)[1])) for t in TEXTS[:3]}
    assert len(set(want.values())) == 3  # different replies: a row mix-up would show
    engine = make(models, max_sessions=3)
    assert engine.pools is not None and len(engine.pools.pools) == 3  # the Thinker's, the Talker's, the predictor's
    assert engine.code2wav is not None  # and one Code2Wav streamer shared by the pooled sessions: their chunks batch
    widths: list[list[int]] = [[], [], [], []]  # sessions per batched step, per pool, then per Code2Wav call
    for pool, w in zip(engine.pools.pools, widths, strict=False):
        pool.decode = _counting(pool.decode, w)  # type: ignore[method-assign]
    engine.code2wav.decode = _counting(engine.code2wav.decode, widths[3])  # type: ignore[method-assign]
    replies = {t: ask(engine, t)[1] for t in TEXTS[:2]}
    assert all(isinstance(r, ModelReply) for r in replies.values())
    events: dict[str, list[EngineEvent]] = {t: [] for t in TEXTS[:3]}
    assert engine.batcher is not None
    while sum(isinstance(e, AudioChunk) for e in events[TEXTS[0]]) < 3:  # the first two are mid-reply (speaking) ...
        for t, res in zip(list(replies), engine.batcher.run_batch(list(replies.values())), strict=True):
            if res is not NOT_DONE:
                assert not isinstance(res, BaseException) and res[0] is not None, res
                events[t].append(res[0])
    assert not any(isinstance(e, ReplyDone) for t in TEXTS[:2] for e in events[t])  # ... when the third one joins
    replies[TEXTS[2]] = ask(engine, TEXTS[2])[1]
    for t, e in drive(engine, replies).items():
        events[t] += e
    err = max(same_reply(summary(events[t]), want[t]) for t in TEXTS[:3])
    print(f"batch widths per pool {[sorted(set(w)) for w in widths]}, max |PCM batched - alone| {err:.3g}")
    assert err < PCM_TOL
    groups = [g for it in engine.batcher.log for g in it.pool_steps]
    assert sum(len(g) for g in groups if len(g) > 1) >= 2 * TOKENS and any(len(g) == 3 for g in groups)
    # every pool batched: the Talker's, the predictor's and Code2Wav's three wide (the late joiner's Thinker trails the
    # others' replies by its prefill, so the Thinker's steps overlap two at a time)
    assert all(w for w in widths) and [max(w) for w in widths] == [2, 3, 3, 3], widths


def test_a_batched_qwen3_session_cut_mid_reply_goes_on_as_one_alone(models: Models) -> None:
    """Barge-in on a pooled session while another keeps replying: the other's reply is the one it gets alone, and
    the cut session's next reply is the one an engine without pools gives after the same cut."""

    def cut_then_ask(engine: OmniEngine, other: bool) -> tuple[Any, ...]:
        s, reply = ask(engine, TEXTS[0])
        live = {"s": reply}
        if other:
            live["o"] = ask(engine, TEXTS[1])[1]
        texts: list[str] = []
        before: list[EngineEvent] = []
        events = 0
        while events < 4:  # a few audio chunks in (the tiny tokenizer's text comes whole at the end), then the cut
            res = (engine.batcher.run_batch(list(live.values())) if engine.batcher is not None
                   else [(next(reply, None), 0.0)])
            if other and res[1] is not NOT_DONE:
                assert not isinstance(res[1], BaseException) and res[1][0] is not None
                before.append(res[1][0])  # the other reply's events so far
            if res[0] is NOT_DONE:
                continue
            assert res[0][0] is not None and not isinstance(res[0][0], ReplyDone), "the reply ended before the cut"
            events += 1
            if isinstance(res[0][0], AudioChunk | TextDelta):
                texts.append(res[0][0].text)
        with torch.inference_mode():
            s.interrupt("".join(texts))
        if other:  # the other session's reply goes on to its end, and says what it says alone
            del live["s"]
            o = before + drive(engine, live)["o"]
            assert same_reply(summary(o), summary(list(ask(make(models), TEXTS[1])[1]))) < PCM_TOL
        s.push_text(TEXTS[2])
        events = drive(engine, {"s": s.respond()})["s"] if engine.batcher is not None else list(s.respond())
        return summary(events)

    assert cut_then_ask(make(models, max_sessions=2), other=True) == cut_then_ask(make(models), other=False)


def test_omni_serve_batch_sessions_flag_for_a_qwen3_checkpoint(qwen3_tiny_dir: Path) -> None:
    from omni.app.cli import build_parser
    from omni.app.serve import make_engine

    args = build_parser().parse_args(["serve", "--engine", "omni", "--model", str(qwen3_tiny_dir),
                                      "--batch-sessions", "2"])
    engine = make_engine(args.engine, model=args.model, device=args.device, batch_sessions=args.batch_sessions)
    assert isinstance(engine, OmniEngine) and engine.pools is not None and engine.batcher is not None
    assert [p.max_sessions for p in engine.pools.pools] == [2, 2, 2]
    sessions = [engine.open_session() for _ in range(3)]
    assert [s.speaking.sid for s in sessions] == [0, 1, None]  # type: ignore[attr-defined]
    sessions[0].close()
    assert [len(p.sessions) for p in engine.pools.pools] == [1, 1, 1]  # closing frees the rows
    sid = engine.open_session().speaking.sid  # type: ignore[attr-defined]
    assert sid is not None and engine.pools.pools[0].sessions[sid].row == 0  # ... for the next session
