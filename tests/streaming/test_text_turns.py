"""Typed user messages (`conversation.item.create` with `input_text`, then `response.create`) through the
session runtime, on the engines that need no checkpoint (the omni and embedded engines have theirs in their
own test files)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from omni.streaming.engine import Engine, EngineSession, TranscriptDelta
from omni.streaming.engines.tiny import TinyLMEngine
from omni.streaming.engines.tone import ToneEngine
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker
from tests.streaming.harness import Harness
from tests.streaming.test_tiny_engine import assert_cache_holds_conversation, reply_text


def typed(text: str, item_id: str = "item_typed") -> dict[str, Any]:
    content = [{"type": "input_text", "text": text}]
    return {"type": "conversation.item.create", "item": {"id": item_id, "type": "message", "role": "user",
                                                         "content": content}}


async def typed_turn(engine: Engine, worker: DeviceWorker, vad: SileroVad, text: str) -> tuple[Harness[Any], str]:
    """One typed turn through a session without server VAD; the harness (closed) and the reply text."""
    h = Harness(engine, worker, vad, SessionConfig(create_response=False))
    await h.start()
    try:
        h.session.handle_client_event(typed(text))
        added = await h.wait_for("conversation.item.added")
        assert added["item"]["content"] == [{"type": "input_text", "text": text}]
        assert added["item"]["id"] == "item_typed" and added["item"]["role"] == "user"
        h.session.handle_client_event({"type": "response.create"})
        done = await h.wait_for("response.done")
        await h.wait_for("omni.metrics")  # the reply has played
    finally:
        await h.close()
    assert done["response"]["status"] == "completed"
    streamed = "".join(e["delta"] for e in h.events if e["type"] == "response.output_text.delta")
    assert streamed == done["response"]["output"][0]["content"][0]["transcript"]
    return h, streamed


async def test_a_typed_turn_on_the_tone_engine(worker: DeviceWorker, vad: SileroVad) -> None:
    engine = ToneEngine()
    h, text = await typed_turn(engine, worker, vad, "Hello there")
    assert text == "You wrote: Hello there"
    assert engine.sessions[-1].history[0] == ("user", "Hello there")
    assert "conversation.item.input_audio_transcription.completed" not in h.types()


async def test_a_typed_turn_on_the_tiny_engine(worker: DeviceWorker, vad: SileroVad) -> None:
    engine = TinyLMEngine()
    _, text = await typed_turn(engine, worker, vad, "hello there")
    # The same conversation driven on a fresh engine's first session (the same seed) gives the same reply.
    engine = TinyLMEngine()
    s = engine.open_session()
    s.push_text("hello there")
    assert reply_text(list(s.respond())) == text and text
    assert list(s.history)[0] == ("user", "hello there")
    assert_cache_holds_conversation(engine, s)


def test_tiny_typed_text_joins_the_spoken_turn() -> None:
    engine = TinyLMEngine()
    s = engine.open_session()
    pcm = (0.1 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32)
    spoken = [e for i in range(0, len(pcm), 320) for e in s.push_audio(pcm[i : i + 320], i / 16000)]
    assert len(spoken) == 2  # two seconds, two words, the turn still open
    s.push_text("and typed")
    final = s.end_turn()[-1]
    assert isinstance(final, TranscriptDelta) and final.final and final.text.endswith(" and typed")
    assert list(s.history)[-1] == ("user", final.text)
    assert_cache_holds_conversation(engine, s)


async def test_a_typed_message_during_a_reply_is_refused(worker: DeviceWorker, vad: SileroVad) -> None:
    h = Harness(ToneEngine(step_delay=0.05), worker, vad, SessionConfig(create_response=False))
    await h.start()
    try:
        h.session.handle_client_event(typed("first"))
        h.session.handle_client_event({"type": "response.create"})
        await h.wait_for("response.output_text.delta")
        h.session.handle_client_event(typed("second", "item_2"))
        err = await h.wait_for("error")
        assert err["error"]["code"] == "conversation_already_has_active_response"
    finally:
        await h.close()


@pytest.mark.parametrize("make", [ToneEngine, TinyLMEngine])
def test_push_text_after_close_is_refused(make: type[Any]) -> None:
    s: EngineSession = make().open_session()
    assert isinstance(s, EngineSession) and s.prepare_turn() == []
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.push_text("hello")
