from __future__ import annotations

import json

import pytest

from omni.streaming.events import ProtocolError, RealtimeEvents, parse_client_event
from omni.streaming.frames import Interrupt, ResponseRequest, SessionUpdate, Truncate, UserMessage
from omni.streaming.vad import EAGERNESS


def test_client_events_become_frames() -> None:
    assert isinstance(parse_client_event('{"type": "response.create"}'), ResponseRequest)
    assert parse_client_event({"type": "response.cancel"}) == Interrupt(0.0, "client_cancel")
    t = parse_client_event(
        {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500}
    )
    assert t == Truncate("item_1", 1500)


def test_session_update_ga_and_beta_shapes() -> None:
    ga = parse_client_event(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 700}},
                    "output": {"voice": "alloy"},
                },
            },
        }
    )
    beta = parse_client_event(
        {
            "type": "session.update",
            "session": {
                "instructions": "Be brief.",
                "voice": "alloy",
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
            },
        }
    )
    assert isinstance(ga, SessionUpdate) and isinstance(beta, SessionUpdate)
    assert ga.settings.pop("voice_field") == "session.audio.output.voice"  # named in an error if the engine refuses it
    assert beta.settings.pop("voice_field") == "session.voice"
    assert (
        ga.settings
        == beta.settings
        == {"instructions": "Be brief.", "voice": "alloy",
            "turn_detection": {"silence_duration_ms": 700, "semantic_eot": 0.0}}  # server_vad: the silence only
    )
    semantic = parse_client_event({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "semantic_vad", "eagerness": "high", "interrupt_response": False}}}}})
    assert isinstance(semantic, SessionUpdate)
    assert semantic.settings["turn_detection"] == {"semantic_eot": EAGERNESS["high"], "interrupt_response": False}
    auto = parse_client_event({"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad"}}})
    assert isinstance(auto, SessionUpdate)
    assert auto.settings["turn_detection"] == {"semantic_eot": EAGERNESS["medium"]}  # auto is medium
    assert EAGERNESS["low"] > EAGERNESS["medium"] > EAGERNESS["high"] > 0  # eager: ends turns on less evidence
    manual = parse_client_event({"type": "session.update", "session": {"turn_detection": None}})
    assert isinstance(manual, SessionUpdate) and manual.settings == {"turn_detection": None}


def test_a_typed_user_message_becomes_a_user_message_frame() -> None:
    content = [{"type": "input_text", "text": "What is the capital"}, {"type": "input_text", "text": "of France?"}]
    m = parse_client_event(
        {"type": "conversation.item.create", "item": {"id": "it_1", "type": "message", "role": "user",
                                                      "content": content}}
    )
    assert isinstance(m, UserMessage) and m.text == "What is the capital of France?" and m.item_id == "it_1"
    anonymous = parse_client_event({"type": "conversation.item.create", "item": {"role": "user", "content": content}})
    assert isinstance(anonymous, UserMessage) and anonymous.item_id.startswith("item_")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_event"),
        ('{"event_id": "e1"}', "missing_type"),
        ('{"type": "response.dance"}', "unknown_event"),
        ('{"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": -5}', "invalid_value"),
        ('{"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad", "eagerness": "max"}}}',
         "invalid_value"),
        ('{"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad", "eagerness": [1]}}}',
         "invalid_value"),
        ('{"type": "session.update", "session": {"turn_detection": {"type": "near_field_vad"}}}', "invalid_value"),
        ('{"type": "session.update", "session": {"turn_detection": {"threshold": 3}}}', "invalid_value"),
        ('{"type": "input_audio_buffer.append", "audio": ""}', "invalid_value"),
        ('{"type": "input_audio_buffer.append", "audio": "AA=="}', "invalid_value"),  # 1 byte: not pcm16
        ('{"type": "response.create", "response": {"output_modalities": ["audio", "text"]}}', "invalid_value"),
        ('{"type": "conversation.item.create", "item": {"type": "message", "role": "assistant", "content": []}}',
         "unsupported_event"),
        ('{"type": "conversation.item.create", "item": {"role": "user", "content": [{"type": "input_audio"}]}}',
         "unsupported_event"),
        ('{"type": "conversation.item.create", "item": {"role": "user", "content": [{"type": "input_text",'
         ' "text": "  "}]}}', "invalid_value"),
    ],
)
def test_bad_client_events_name_the_problem(raw: str, code: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_client_event(raw)
    assert e.value.code == code and str(e.value)


def test_server_events_are_numbered_json() -> None:
    ev = RealtimeEvents("sess_1")
    a = ev.speech_started("item_1", 120)
    b = ev.response_done("resp_1", "item_2", "cancelled", "Hello", "turn_detected")
    assert a["type"] == "input_audio_buffer.speech_started" and a["audio_start_ms"] == 120
    assert a["event_id"] != b["event_id"]
    assert b["response"]["status"] == "cancelled"
    assert b["response"]["output"][0]["content"][0]["transcript"] == "Hello"
    assert ev.metrics({"turn": 1})["type"] == "omni.metrics"
    json.dumps([a, b])
