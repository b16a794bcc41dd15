"""The OpenAI Realtime WebSocket API (/v1/realtime), driven by the official `openai` SDK against a real server on
127.0.0.1 (tone engine): every event the server sends must parse as the SDK's typed server event, and each
response's events come in the protocol's order."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image

from benchmarks.spoken import read_wav
from benchmarks.ws_client import WsRealtimeClient, invalid_events, response_order_problems
from omni.app.realtime_ws import Outbox, OutboxFull
from omni.streaming.engine import ResponseOptions
from omni.streaming.engines.tone import ToneEngine
from omni.streaming.vad import TurnConfig
from tests.app.conftest import StartServer
from tests.app.test_serve_loopback import wait_until
from tests.streaming.conftest import make_speech_wav

TEXT_ITEM = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is this"}]}


@pytest.fixture(scope="module")
def speech24k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The spoken question at the protocol's 24 kHz, then 1 s of silence (the turn detector's end of turn)."""
    path = make_speech_wav(tmp_path_factory.mktemp("speech") / "hello24k.wav", "Hello there, can you hear me?", 24000)
    pcm, rate = read_wav(path)
    assert rate == 24000
    return np.concatenate([pcm, np.zeros(24000, np.int16)])


async def connect(url: str) -> WsRealtimeClient:
    client = WsRealtimeClient(url)
    await client.connect()
    await client.wait_for("session.created")
    return client


def check_conformance(client: WsRealtimeClient) -> None:
    assert invalid_events(client.events) == []
    assert response_order_problems(client.events) == []


async def test_spoken_turn_server_vad(start_server: StartServer, speech24k: np.ndarray) -> None:
    engine = ToneEngine()
    url, _ = await start_server(engine)
    client = await connect(url)
    try:
        await client.append(speech24k, pace=0.1)  # real time, 100 ms pieces
        await client.wait_for("input_audio_buffer.speech_stopped")
        heard = await client.wait_for("conversation.item.input_audio_transcription.completed")
        done = await client.wait_for("response.done")
        await client.wait_for("omni.metrics")
    finally:
        await client.close()
    rid = done["response"]["id"]
    audio = client.audio(rid)
    words = "".join(e["delta"] for e in client.events if e["type"] == "response.output_audio_transcript.delta")
    assert heard["usage"]["type"] == "duration" and heard["usage"]["seconds"] > 1.0
    assert words.startswith("Hello, I heard you speak for")
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"] == words
    ends = {e["type"]: e for e in client.events if e.get("response_id") == rid and e["type"].endswith(".done")}
    assert ends["response.output_audio_transcript.done"]["transcript"] == words
    assert ends["response.output_text.done"]["text"] == words
    assert ends["response.content_part.done"]["part"] == {"type": "audio", "transcript": words}
    assert "response.output_audio.done" in ends
    assert len(audio) > 24000 and np.abs(audio).max() > 1000  # > 1 s of the tones at 24 kHz, not silence
    assert not any(e["type"].startswith("output_audio_buffer.") for e in client.events)  # WebRTC-only events
    check_conformance(client)


class JudgingToneEngine(ToneEngine):
    """A tone engine that says it judges ends of turn (as the embedded engine does): for session.created."""

    judges_turn_end = True


async def test_semantic_vad_in_session_update(start_server: StartServer) -> None:
    """semantic_vad (its GA shape, sent by the SDK) is taken with its eagerness and shown back as the SDK's
    SemanticVad; server_vad turns it off; an engine that cannot judge ends of turn shows server_vad."""
    td_of = lambda e: e["session"]["audio"]["input"]["turn_detection"]  # noqa: E731
    url, _ = await start_server(JudgingToneEngine(), turn=TurnConfig(silence_ms=400, semantic_eot=0.5))  # on
    client = await connect(url)
    try:
        created = next(e for e in client.events if e["type"] == "session.created")
        for td in ({"type": "semantic_vad", "eagerness": "high", "create_response": True},
                   {"type": "server_vad", "silence_duration_ms": 600}, {"type": "semantic_vad"}):
            n = len(client.events)
            await client.send({"type": "session.update", "session": {"type": "realtime",
                                                                      "audio": {"input": {"turn_detection": td}}}})
            await client.wait_for("session.updated", start=n)
        n = len(client.events)
        await client.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}}})
        bad = await client.wait_for("error", start=n)
    finally:
        await client.close()
    updated = [td_of(e) for e in client.events if e["type"] == "session.updated"]
    assert td_of(created) == {"type": "semantic_vad", "eagerness": "medium", "create_response": True,
                              "interrupt_response": True}
    assert updated[0]["type"] == "semantic_vad" and updated[0]["eagerness"] == "high"
    assert updated[1]["type"] == "server_vad" and updated[1]["silence_duration_ms"] == 600
    assert updated[2]["type"] == "semantic_vad" and updated[2]["eagerness"] == "medium"  # auto is medium
    assert bad["error"]["code"] == "invalid_value" and "eagerness" in bad["error"]["message"]
    check_conformance(client)
    url, _ = await start_server(ToneEngine())
    plain = await connect(url)
    try:
        await plain.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}}})
        shown = td_of(await plain.wait_for("session.updated"))
    finally:
        await plain.close()
    assert shown["type"] == "server_vad" and td_of(plain.events[0])["type"] == "server_vad"
    check_conformance(plain)


async def test_manual_turn_and_text_only_reply(start_server: StartServer, speech24k: np.ndarray) -> None:
    engine = ToneEngine()
    url, _ = await start_server(engine)
    client = await connect(url)
    try:
        await client.send({"type": "session.update", "session": {"type": "realtime",
                                                                  "audio": {"input": {"turn_detection": None}}}})
        updated = await client.wait_for("session.updated")
        await client.send({"type": "input_audio_buffer.commit"})  # nothing appended yet
        empty = await client.wait_for("error")
        await client.append(speech24k)  # as fast as the socket takes it: nothing waits for the detector
        await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for("input_audio_buffer.committed")
        heard = await client.wait_for("conversation.item.input_audio_transcription.completed")
        n = len(client.events)
        await client.send({"type": "input_audio_buffer.commit"})  # that audio is committed already
        again = await client.wait_for("error", start=n)
        n = len(client.events)
        await client.send(
            {"type": "response.create", "response": {"output_modalities": ["text"], "instructions": "Be brief."}}
        )
        done = await client.wait_for("response.done", start=n)
    finally:
        await client.close()
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert empty["error"]["code"] == again["error"]["code"] == "input_audio_buffer_commit_empty"
    assert [e["type"] for e in client.events].count("input_audio_buffer.committed") == 1
    # All the audio appended before the commit was in the turn (2.7 s of speech and silence at 24 kHz).
    assert heard["usage"]["seconds"] >= len(speech24k) / 24000 - 0.1, heard
    assert "spoke for" in heard["transcript"]
    assert not any(e["type"] == "response.output_audio.delta" for e in client.events)
    assert done["response"]["output"][0]["content"][0]["type"] == "output_text"
    assert done["response"]["output"][0]["content"][0]["text"].startswith("Hello, I heard you speak for")
    assert engine.sessions[-1].responses == [ResponseOptions(speech=False, instructions="Be brief.")]
    assert not any(e["type"] == "response.created" for e in client.events[:n])  # no reply before response.create
    check_conformance(client)


async def manual_turns(url: str) -> WsRealtimeClient:
    client = await connect(url)
    await client.send({"type": "session.update", "session": {"type": "realtime",
                                                              "audio": {"input": {"turn_detection": None}}}})
    await client.wait_for("session.updated")
    return client


async def test_input_audio_buffer_clear_is_answered_and_the_session_goes_on(
    start_server: StartServer, speech24k: np.ndarray
) -> None:
    """Manual turns: `clear` with nothing appended and after silence is answered with `cleared` (a valid SDK
    event), the buffer is then empty (`commit` is refused), and a turn appended after it is heard whole."""
    engine = ToneEngine()
    url, _ = await start_server(engine)
    client = await manual_turns(url)
    try:
        await client.send({"type": "input_audio_buffer.clear"})
        await client.wait_for("input_audio_buffer.cleared")
        await client.append(np.zeros(24000, np.int16))  # 1 s of silence: no speech, no turn opened
        n = len(client.events)
        await client.send({"type": "input_audio_buffer.clear"})
        await client.wait_for("input_audio_buffer.cleared", start=n)
        await client.send({"type": "input_audio_buffer.commit"})
        empty = await client.wait_for("error", start=n)
        await client.append(speech24k)
        await client.send({"type": "input_audio_buffer.commit"})
        heard = await client.wait_for("conversation.item.input_audio_transcription.completed")
    finally:
        await client.close()
    assert empty["error"]["code"] == "input_audio_buffer_commit_empty", empty
    assert [e["type"] for e in client.events].count("input_audio_buffer.cleared") == 2
    assert [e["type"] for e in client.events].count("input_audio_buffer.committed") == 1
    assert heard["usage"]["seconds"] >= len(speech24k) / 24000 - 0.1, heard
    check_conformance(client)


async def test_input_audio_buffer_clear_drops_speech_already_appended(
    start_server: StartServer, speech24k: np.ndarray
) -> None:
    """Manual turns: speech appended, heard by the engine (its partial transcripts came), then cleared: the
    engine's open turn is taken back (`discard_audio`), the next commit is refused as empty, and a turn appended
    after it is heard alone (the transcription's usage is its length, not both)."""
    engine = ToneEngine()
    url, _ = await start_server(engine)
    client = await manual_turns(url)
    try:
        await client.append(speech24k)
        await client.wait_for("conversation.item.input_audio_transcription.delta")  # in the engine's open turn
        await client.send({"type": "input_audio_buffer.clear"})
        await client.wait_for("input_audio_buffer.cleared")
        n = len(client.events)
        await client.send({"type": "input_audio_buffer.commit"})
        answer = await client.wait_for(lambda e: e["type"] in ("error", "input_audio_buffer.committed"), start=n)
        second = speech24k[: len(speech24k) // 2]
        await client.append(second)
        await client.send({"type": "input_audio_buffer.commit"})
        heard = await client.wait_for("conversation.item.input_audio_transcription.completed")
    finally:
        await client.close()
    assert answer["type"] == "error" and answer["error"]["code"] == "input_audio_buffer_commit_empty", answer
    assert engine.sessions[-1].discarded_samples > 16000  # more than a second of speech was taken back
    assert abs(heard["usage"]["seconds"] - len(second) / 24000) < 0.1, heard
    check_conformance(client)


def png_data_url(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def test_text_and_image_turn(start_server: StartServer) -> None:
    engine = ToneEngine()
    url, _ = await start_server(engine)
    client = await connect(url)
    image = {"type": "input_image", "image_url": png_data_url(64, 48)}
    try:
        item = {**TEXT_ITEM, "content": [image, *TEXT_ITEM["content"]]}
        await client.send({"type": "conversation.item.create", "item": item})
        added = await client.wait_for("conversation.item.done")
        await client.send({"type": "response.create"})
        done = await client.wait_for("response.done")
    finally:
        await client.close()
    assert [p["type"] for p in added["item"]["content"]] == ["input_image", "input_text"]
    assert engine.sessions[-1].images == [(48, 64)]
    assert done["response"]["output"][0]["content"][0]["transcript"] == "You wrote: what is this"
    assert len(client.audio(done["response"]["id"])) > 0
    check_conformance(client)


async def test_instructions_change_after_the_first_reply_and_the_voice_does_not(start_server: StartServer) -> None:
    """New instructions after the first reply are taken (`session.updated` shows them) and guide the replies from
    the next one on, in the same engine session (the conversation goes on); a new voice is refused as OpenAI
    refuses it once the assistant has spoken (`cannot_update_voice`, the session as it was), while re-sending the
    same values with another setting (as clients that send their whole session do) applies that setting."""
    engine = ToneEngine()
    url, _ = await start_server(engine)
    client = await connect(url)
    same = {"instructions": "Be brief.", "audio": {"output": {"voice": "ash"}}}
    try:
        await client.send({"type": "session.update", "session": {"type": "realtime", **same}})
        await client.wait_for("session.updated")
        await client.send({"type": "conversation.item.create", "item": TEXT_ITEM})
        await client.send({"type": "response.create"})
        await client.wait_for("response.done")
        n = len(client.events)
        await client.send({"type": "session.update", "session": {
            "type": "realtime", **same, "audio": {**same["audio"], "input": {"turn_detection": None}}}})
        kept = await client.wait_for(lambda e: e["type"] in ("session.updated", "error"), start=n)
        n = len(client.events)
        await client.send({"type": "session.update", "session": {"type": "realtime", "audio": {"output": {
            "voice": "verse"}}, "instructions": "Be long."}})
        refused = await client.wait_for(lambda e: e["type"] in ("session.updated", "error"), start=n)
        n = len(client.events)
        await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Be long."}})
        changed = await client.wait_for(lambda e: e["type"] in ("session.updated", "error"), start=n)
        for _ in range(2):
            n = len(client.events)
            await client.send({"type": "conversation.item.create", "item": TEXT_ITEM})
            await client.send({"type": "response.create"})
            await client.wait_for("response.done", start=n)
    finally:
        await client.close()
    assert kept["type"] == "session.updated", kept
    assert kept["session"]["audio"]["input"]["turn_detection"] is None
    assert kept["session"]["instructions"] == "Be brief." and kept["session"]["audio"]["output"]["voice"] == "ash"
    assert refused["type"] == "error" and refused["error"]["code"] == "cannot_update_voice", refused
    assert refused["error"]["param"] == "session.audio.output.voice"
    assert changed["type"] == "session.updated", changed
    assert changed["session"]["instructions"] == "Be long." and changed["session"]["audio"]["output"]["voice"] == "ash"
    assert len(engine.sessions) == 2  # opened at the start, reopened once for the first update; never after
    session = engine.sessions[-1]
    assert (session.instructions, session.voice) == ("Be long.", "ash")
    # the next reply takes the new instructions (as a reply's own), the one after has them in its history
    assert [r.instructions for r in session.responses] == [None, "Be long.", None]
    check_conformance(client)


async def test_cancel_then_truncate(start_server: StartServer) -> None:
    engine = ToneEngine(step_delay=0.15)  # 16 words: about 2.4 s to generate
    url, _ = await start_server(engine)
    client = await connect(url)
    try:
        await client.send({"type": "conversation.item.create", "item": TEXT_ITEM})
        await client.send({"type": "response.create"})
        first = await client.wait_for("response.output_audio.delta")
        await client.send({"type": "response.cancel"})
        cancelled = await client.wait_for("response.done")
        n = len(client.events)
        await client.send({"type": "conversation.item.create", "item": TEXT_ITEM})
        await client.send({"type": "response.create"})
        done = await client.wait_for("response.done", start=n, limit=60)
        item_id = done["response"]["output"][0]["id"]
        await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                           "audio_end_ms": 300})
        truncated = await client.wait_for("conversation.item.truncated")
    finally:
        await client.close()
    assert cancelled["response"]["status"] == "cancelled" and cancelled["response"]["id"] == first["response_id"]
    assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == 300
    full = done["response"]["output"][0]["content"][0]["transcript"]
    kept = engine.sessions[-1].interrupted_with
    assert len(kept) == 2 and 0 < len(kept[1]) < len(full) and full.startswith(kept[1])  # 300 ms: a word or two
    check_conformance(client)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json"),
        ('{"type": "response.dance"}', "unknown_event"),
        ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_value"),
        ('{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}',
         "invalid_value"),
        ('{"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": '
         '[{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}}', "invalid_value"),
        ('{"type": "response.cancel"}', "response_cancel_not_active"),
    ],
)
async def test_bad_events_get_errors_and_the_session_survives(start_server: StartServer, raw: str, code: str) -> None:
    engine = ToneEngine()
    url, _ = await start_server(engine)
    client = await connect(url)
    try:
        await client.send_raw(raw)
        error = await client.wait_for("error")
        await client.send({"type": "conversation.item.create", "item": TEXT_ITEM})
        await client.send({"type": "response.create"})
        done = await client.wait_for("response.done")
    finally:
        await client.close()
    assert error["error"]["code"] == code and error["error"]["message"]
    assert done["response"]["status"] == "completed"
    check_conformance(client)


async def test_client_vanishing_mid_reply_tears_the_session_down(start_server: StartServer) -> None:
    engine = ToneEngine(step_delay=0.1)
    url, server = await start_server(engine)
    client = await connect(url)
    await client.send({"type": "conversation.item.create", "item": TEXT_ITEM})
    await client.send({"type": "response.create"})
    await client.wait_for("response.output_audio.delta")
    assert client.conn is not None
    client.conn._connection.transport.abort()  # type: ignore[attr-defined]  # TCP gone, no close frame
    await client.close()
    await wait_until(lambda: engine.open_sessions == 0 and "omni_ws_connections_active 0" in server.metrics.render())
    assert [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(("sess_", "ws_"))] == []


async def test_outbox_bounds_events_and_holds_speech_back() -> None:
    box = Outbox(limit=4, audio_limit=2)
    box.put("a")
    box.put("b")
    waiting = asyncio.create_task(box.wait_audio_room())
    await asyncio.sleep(0)
    assert not waiting.done()  # two messages queued: speech waits
    box.put("c")
    box.put("d")
    with pytest.raises(OutboxFull):
        box.put("e")  # events never wait: a client this far behind is disconnected
    assert [await box.get() for _ in range(3)] == ["a", "b", "c"]
    await asyncio.wait_for(waiting, 1.0)


async def test_truncating_an_older_reply_leaves_the_newest_alone(start_server: StartServer) -> None:
    """The engine's `interrupt` trims its newest reply (its history has no item ids): a truncate naming an older
    assistant item after a newer reply exists is refused with an error naming the item, and the newest reply is
    untouched; the newest reply itself can still be truncated."""
    engine = ToneEngine()
    url, _ = await start_server(engine)
    client = await connect(url)
    try:
        items = []
        for _ in range(2):
            n = len(client.events)
            await client.send({"type": "conversation.item.create", "item": TEXT_ITEM})
            await client.send({"type": "response.create"})
            done = await client.wait_for("response.done", start=n, limit=60)
            items.append(done["response"]["output"][0]["id"])
        n = len(client.events)
        await client.send({"type": "conversation.item.truncate", "item_id": items[0], "content_index": 0,
                           "audio_end_ms": 300})
        error = await client.wait_for("error", start=n)
        kept_after_refusal = list(engine.sessions[-1].interrupted_with)
        n = len(client.events)
        await client.send({"type": "conversation.item.truncate", "item_id": items[1], "content_index": 0,
                           "audio_end_ms": 300})
        truncated = await client.wait_for("conversation.item.truncated", start=n)
    finally:
        await client.close()
    assert error["error"]["code"] == "item_truncate_invalid_item_id" and items[0] in error["error"]["message"]
    assert kept_after_refusal == []  # the engine was not asked to trim anything
    assert truncated["item_id"] == items[1]
    assert len(engine.sessions[-1].interrupted_with) == 1
    assert not any(e["type"] == "conversation.item.truncated" and e["item_id"] == items[0] for e in client.events)
    check_conformance(client)
