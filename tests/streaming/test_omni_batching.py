"""The omni engine's sessions batched on the device: `OmniEngine(max_sessions=N)` keeps the first N sessions'
Thinker and Talker caches in two pools, replies are `ModelReply`s, and `StepBatcher.run_batch` (what the device
worker calls for the runtime) runs their Thinker and Talker decode steps as one forward per pool, and their due
token2wav chunks as one batch. Each session's events (text, codes exactly; audio to float rounding) must be
those it gets from an engine without pools (greedy, float32 on the CPU), also after a barge-in, and sessions
beyond the pools run alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from omni.model.lm.sampling import SamplingConfig
from omni.streaming.batching import ModelReply
from omni.streaming.engine import AudioChunk, EngineEvent, ReplyDone, TextDelta
from omni.streaming.engines.omni import OmniEngine, OmniEngineSession
from omni.streaming.worker import NOT_DONE
from tests.streaming.test_omni_engine import SCHEDULE, SOLVER, Models, models  # noqa: F401

TEXTS = ["hello there", "how is the weather", "bye now", "ok"]
TOKENS, CODES = 10, 24  # short replies: the box running the tests is slow
# Batched token2wav chunks equal the lone ones to float rounding, which this random vocoder (clamping at +-1)
# amplifies: measured SNR >= 99.5 dB (tests/model/test_omni_batch.py); a row mix-up gives about 0 dB.
PCM_SNR_DB = 80.0


def make(models: Models, max_sessions: int = 0) -> OmniEngine:  # noqa: F811
    _, speech = models
    return OmniEngine(None, models=models, sampling=SamplingConfig(temperature=0.0, max_new_tokens=TOKENS),
                      talker_sampling=speech.talker.cfg.sampling(temperature=0.0, max_new_tokens=CODES), seed=0,
                      schedule=SCHEDULE, solver=SOLVER, max_sessions=max_sessions)


def summary(events: list[EngineEvent]) -> tuple[Any, ...]:
    done = events[-1]
    assert isinstance(done, ReplyDone)
    audio = [e for e in events if isinstance(e, AudioChunk)]
    pcm = np.concatenate([a.pcm for a in audio]) if audio else np.zeros(0, np.float32)
    texts = "".join(e.text for e in events if isinstance(e, TextDelta))
    return texts, done.stats["new_tokens"], done.stats["codes"], tuple(a.text for a in audio), pcm.tobytes()


def ask(engine: OmniEngine, text: str) -> tuple[OmniEngineSession, Any]:
    s = engine.open_session()
    s.push_text(text)
    return s, s.respond()


def drive(engine: OmniEngine, replies: dict[str, Any]) -> dict[str, list[EngineEvent]]:
    """Step every reply as the device worker does (one `run_batch` of all of them per iteration)."""
    assert engine.batcher is not None
    events: dict[str, list[EngineEvent]] = {k: [] for k in replies}
    live = dict(replies)
    while live:
        keys = list(live)
        for k, res in zip(keys, engine.batcher.run_batch([live[k] for k in keys]), strict=True):
            if res is NOT_DONE:
                continue
            assert not isinstance(res, BaseException), res
            ev, _ = res
            if ev is None:
                del live[k]
            else:
                events[k].append(ev)
    return events


def test_sessions_batched_say_what_each_says_alone(models: Models) -> None:  # noqa: F811
    want = {t: summary(list(ask(make(models), t)[1])) for t in TEXTS[:3]}
    assert len(set(want.values())) == 3  # different replies (text or speech): a row mix-up would show
    engine = make(models, max_sessions=3)
    asked = {t: ask(engine, t) for t in TEXTS[:3]}
    replies = {t: r for t, (_, r) in asked.items()}
    assert all(isinstance(r, ModelReply) for r in replies.values())
    assert engine.token2wav is not None  # one streamer shared by the pooled sessions: their chunks batch
    assert all(s.speaking.streamer is engine.token2wav for s, _ in asked.values())  # type: ignore[union-attr]
    got = drive(engine, replies)
    for t, e in got.items():  # text and codes exact; the PCM to float rounding (token2wav chunks batch too)
        assert summary(e)[:-1] == want[t][:-1], t
        pcm, ref = (np.frombuffer(x, np.float32).astype(np.float64) for x in (summary(e)[-1], want[t][-1]))
        assert pcm.shape == ref.shape and len(ref) > 0
        snr = 10 * np.log10((ref**2).sum() / max(((pcm - ref) ** 2).sum(), 1e-300))
        assert snr > PCM_SNR_DB, (t, snr, np.abs(pcm - ref).max())
    groups = [g for it in engine.batcher.log for g in it.pool_steps]
    assert sum(len(g) for g in groups if len(g) > 1) >= 16 and any(len(g) == 3 for g in groups)  # steps batched


def test_sessions_beyond_the_pools_run_alone_and_closing_frees_rows(models: Models) -> None:  # noqa: F811
    engine = make(models, max_sessions=2)
    assert engine.pools is not None
    sessions = [ask(engine, t) for t in TEXTS[:3]]
    assert [s.speaking.sid for s, _ in sessions] == [0, 1, None]  # type: ignore[union-attr]
    got = drive(engine, {t: r for t, (_, r) in zip(TEXTS, sessions, strict=False)})
    assert summary(got[TEXTS[2]]) == summary(list(ask(make(models), TEXTS[2])[1]))
    sessions[0][0].close()
    assert [len(p.sessions) for p in engine.pools.pools] == [1, 1]
    s, reply = ask(engine, TEXTS[3])  # takes the freed rows
    assert s.speaking.sid is not None  # type: ignore[union-attr]
    assert summary(drive(engine, {"x": reply})["x"]) == summary(list(ask(make(models), TEXTS[3])[1]))


def test_a_batched_session_cut_mid_reply_goes_on_as_one_alone(models: Models) -> None:  # noqa: F811
    """Barge-in on a pooled session (rollback in its rows) while another keeps replying: its next reply is the one
    an engine without pools gives after the same cut."""

    def cut_then_ask(engine: OmniEngine, other: bool) -> tuple[Any, ...]:
        s, reply = ask(engine, TEXTS[0])
        live = {"s": reply}
        if other:
            live["o"] = ask(engine, TEXTS[1])[1]
        texts: list[str] = []
        while len(texts) < 3:
            res = (engine.batcher.run_batch(list(live.values())) if engine.batcher is not None
                   else [(next(reply, None), 0.0)])
            if res[0] is NOT_DONE:
                continue
            assert res[0][0] is not None and not isinstance(res[0][0], ReplyDone), "the reply ended before the cut"
            if isinstance(res[0][0], TextDelta):
                texts.append(res[0][0].text)
        with torch.inference_mode():
            s.interrupt("".join(texts[:2]))
        if other:  # the other session's reply goes on to its end
            del live["s"]
            drive(engine, live)
        s.push_text(TEXTS[2])
        events = drive(engine, {"s": s.respond()})["s"] if engine.batcher is not None else list(s.respond())
        return summary(events)

    assert cut_then_ask(make(models, max_sessions=2), other=True) == cut_then_ask(make(models), other=False)


def test_omni_serve_batch_sessions_flag(models: Models) -> None:  # noqa: F811
    from omni.app.cli import build_parser
    from omni.app.serve import make_engine

    args = build_parser().parse_args(["serve", "--engine", "omni", "--model", models[0].source,
                                      "--batch-sessions", "2"])
    engine = make_engine(args.engine, model=args.model, device=args.device, batch_sessions=args.batch_sessions)
    assert isinstance(engine, OmniEngine) and engine.pools is not None
    assert [p.max_sessions for p in engine.pools.pools] == [2, 2]
    with pytest.raises(ValueError, match="--batch-sessions is for --engine omni"):
        make_engine("tiny", batch_sessions=2)
    with pytest.raises(ValueError, match="max_sessions must be >= 0"):
        make(models, max_sessions=-1)
