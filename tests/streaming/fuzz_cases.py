"""Hostile client events for the fuzzers (tests/streaming/test_fuzz.py on the session, tests/app/
test_fuzz_transports.py over the data channel and the WebSocket), each with the answer the protocol promises.

A case is one event's raw text and its `Expect`: accepted, refused naming a field (`error.param`, the field's
path as OpenAI Realtime writes it: `session.audio.input.turn_detection.threshold`, `item.content[0].text`), or
refused as a whole (unparsable JSON: no one field is at fault). The raw values are spliced into the event's
text, so JSON that Python's `json.dumps` would not write goes on the wire too: NaN and Infinity literals,
integers past Python's 4,300-digit limit, 10,000-deep arrays and objects, lone-surrogate escapes.

The expected answers restate the protocol (what a field takes), not the parser's code: a case where the two
disagree is a server bug or a wrong contract, and either way a test failure to look at.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from omni.streaming.events import MAX_EVENT_ID_CHARS, MAX_INSTRUCTIONS_CHARS
from omni.streaming.vad import EAGERNESS

# OMNI_FUZZ_EXAMPLES (e.g. 2000) runs every fuzzer longer; the suite's default keeps it to seconds.
EXAMPLES = int(os.environ.get("OMNI_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # a fixed seed: the same examples every run
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: minutes per failure on async scenarios
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

DEEP = 10_000  # levels: far past Python's parser (~1,000) and any recursion limit


@dataclass(frozen=True)
class Expect:
    """`accepted`: no error from the protocol check. Else `param`: the field named by the error ("" when no one
    field is at fault); `code`: the error code when the case fixes it."""

    accepted: bool
    param: str = ""
    code: str = ""


ACCEPTED = Expect(True)
UNPARSABLE = Expect(False, "", "invalid_json")


def refused(param: str) -> Expect:
    return Expect(False, param)


class _Unparsable:
    """A raw value that makes the whole event unparsable (too deep, too many digits)."""


NOPARSE = _Unparsable()

# Raw JSON values that break parsers and validators.
HOSTILE_VALUES = [
    "NaN", "Infinity", "-Infinity", "1e308", "-1e308", "1e999", "-1", "-0.0", "0", "1", "0.5", "1.0", "2",
    "123456789012345678901234567890", "-123456789012345678901234567890", "1" * 5000, "true", "false", "null",
    '""', '" "', '"x"', '"\\u0000"', '"a\\u0000b"', '"\\ud800"', '"\\udfff tail"', '"\\u202eevil\\u202c"',
    '"\\ud83d\\ude00"', '"\U0001f600\u200f\u05d0"', '"server_vad"', '"semantic_vad"', '"high"', '"audio/pcm"',
    '"AAA="', '"%%%"', '"data:text/plain,x"', "[]", "{}", '["audio"]', '["text"]', '["audio", "text"]', "[null]",
    '{"type": "audio/pcm", "rate": 16000}', "[" * DEEP + "]" * DEEP, '{"a":' * DEEP + "1" + "}" * DEEP,
    "[" * 40 + "]" * 40, '{"a":' * 40 + "1" + "}" * 40,
]


def parsed(raw: str) -> Any:
    """The value a raw JSON value parses to, or NOPARSE."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return NOPARSE


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _in(lo: float, hi: float, open_: bool = False) -> Callable[[Any], bool]:
    return lambda v: _number(v) and (lo < v < hi if open_ else lo <= v <= hi)


def _short_text(v: Any) -> bool:
    return v is None or isinstance(v, str) and len(v) <= MAX_INSTRUCTIONS_CHARS


def _pcm16_b64(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(raw) and len(raw) % 2 == 0


def _format(v: Any) -> bool:
    return v is None or isinstance(v, dict) and v.get("type") == "audio/pcm" and v.get("rate", 24000) == 24000


@dataclass(frozen=True)
class Field:
    """One field of one event: `event` with the value's place marked by HOLE; `takes`: whether the protocol
    accepts the parsed value there (the rest of the event being valid)."""

    param: str
    event: dict[str, Any]
    takes: Callable[[Any], bool]


HOLE = "\x00hole\x00"


def _td(where: str, **extra: Any) -> dict[str, Any]:
    """A session.update whose turn_detection (GA or beta place) holds `extra`."""
    td = {"type": "server_vad", **extra}
    if where == "ga":
        return {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": td}}}}
    return {"type": "session.update", "session": {"turn_detection": td}}


def _td_fields() -> list[Field]:
    out = []
    for where, prefix in (("ga", "session.audio.input.turn_detection"), ("beta", "session.turn_detection")):
        out += [
            Field(f"{prefix}.threshold", _td(where, threshold=HOLE), _in(0.0, 1.0, open_=True)),
            Field(f"{prefix}.silence_duration_ms", _td(where, silence_duration_ms=HOLE), _in(0, 10000)),
            Field(f"{prefix}.prefix_padding_ms", _td(where, prefix_padding_ms=HOLE), _in(0, 5000)),
            Field(f"{prefix}.min_speech_duration_ms", _td(where, min_speech_duration_ms=HOLE), _in(0, 5000)),
            Field(f"{prefix}.create_response", _td(where, create_response=HOLE), lambda v: isinstance(v, bool)),
            Field(f"{prefix}.interrupt_response", _td(where, interrupt_response=HOLE), lambda v: isinstance(v, bool)),
            Field(f"{prefix}.type", _td(where, type=HOLE), lambda v: v in ("server_vad", "semantic_vad")),
            Field(f"{prefix}.eagerness", _td(where, type="semantic_vad", eagerness=HOLE),
                  lambda v: isinstance(v, str) and v in EAGERNESS),
        ]
    return out


FIELDS: list[Field] = [
    *_td_fields(),
    Field("session.audio.input.turn_detection",
          {"type": "session.update", "session": {"audio": {"input": {"turn_detection": HOLE}}}},
          lambda v: v is None or isinstance(v, dict)),
    Field("session.turn_detection", {"type": "session.update", "session": {"turn_detection": HOLE}},
          lambda v: v is None or isinstance(v, dict)),
    Field("session", {"type": "session.update", "session": HOLE}, lambda v: isinstance(v, dict)),
    Field("session.instructions", {"type": "session.update", "session": {"instructions": HOLE}}, _short_text),
    Field("session.voice", {"type": "session.update", "session": {"voice": HOLE}},
          lambda v: v is None or isinstance(v, str)),
    Field("session.audio.output.voice", {"type": "session.update", "session": {"audio": {"output": {"voice": HOLE}}}},
          lambda v: v is None or isinstance(v, str)),
    Field("session.audio", {"type": "session.update", "session": {"audio": HOLE}},
          lambda v: v is None or isinstance(v, dict)),
    Field("session.audio.input.format",
          {"type": "session.update", "session": {"audio": {"input": {"format": HOLE}}}}, _format),
    Field("session.audio.output.format",
          {"type": "session.update", "session": {"audio": {"output": {"format": HOLE}}}}, _format),
    Field("session.output_modalities", {"type": "session.update", "session": {"output_modalities": HOLE}},
          lambda v: v in (["audio"], ["text"])),
    Field("session.omni.user_id", {"type": "session.update", "session": {"omni": {"user_id": HOLE}}},
          lambda v: v is None or isinstance(v, str) and bool(v.strip()) and len(v) <= 128),
    Field("response", {"type": "response.create", "response": HOLE}, lambda v: v is None or isinstance(v, dict)),
    Field("response.instructions", {"type": "response.create", "response": {"instructions": HOLE}}, _short_text),
    Field("response.output_modalities", {"type": "response.create", "response": {"output_modalities": HOLE}},
          lambda v: v in (["audio"], ["text"])),
    Field("item_id", {"type": "conversation.item.truncate", "item_id": HOLE, "audio_end_ms": 10},
          lambda v: isinstance(v, str)),
    Field("audio_end_ms", {"type": "conversation.item.truncate", "item_id": "item_x", "audio_end_ms": HOLE},
          lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    Field("audio", {"type": "input_audio_buffer.append", "audio": HOLE}, _pcm16_b64),
    Field("item", {"type": "conversation.item.create", "item": HOLE}, lambda v: False),  # no value is a message
    Field("item.content", {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                        "content": HOLE}}, lambda v: False),
    Field("item.content[0].image_url", {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_image", "image_url": HOLE}]}},
          lambda v: isinstance(v, str) and v.startswith("data:image/")),
    Field("event_id", {"type": "response.cancel", "event_id": HOLE},
          lambda v: v is None or isinstance(v, str) and len(v) <= MAX_EVENT_ID_CHARS),
    Field("type", {"type": HOLE}, lambda v: False),  # no hostile value is an event type
]


def fill(event: dict[str, Any], raw_value: str) -> str:
    """The event's JSON text with the raw value at HOLE."""
    text = json.dumps(event)
    hole = json.dumps(HOLE)
    assert text.count(hole) == 1
    return text.replace(hole, raw_value)


def expect(field: Field, raw_value: str) -> Expect:
    v = parsed(raw_value)
    if v is NOPARSE:
        return UNPARSABLE
    if isinstance(v, str) and _lone_surrogate(v):
        return refused(field.param)  # a lone surrogate: not Unicode text, whatever the field takes
    if field.param == "item" and isinstance(v, dict):  # an object, but not a user message: which key is wrong
        return refused("item.type" if v.get("type", "message") != "message" else "item.role")
    if field.param.endswith("turn_detection") and isinstance(v, dict) and v.get("type", "server_vad") not in (
        "server_vad", "semantic_vad"
    ):
        return refused(f"{field.param}.type")
    if field.param == "item.content" and isinstance(v, list) and v:  # a list, but its first part is no part
        return refused("item.content[0]")
    return ACCEPTED if field.takes(v) else refused(field.param)


def _lone_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _text_value(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


raw_values = st.one_of(
    st.sampled_from(HOSTILE_VALUES),
    st.text(max_size=30).map(_text_value),
    st.text(alphabet=st.characters(min_codepoint=0x80), max_size=20).map(_text_value),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.integers(min_value=0, max_value=MAX_INSTRUCTIONS_CHARS + 50).map(lambda n: json.dumps("é" * n)),
)


@st.composite
def field_cases(draw: st.DrawFn) -> tuple[str, Expect]:
    """(raw event text, what the server must answer) for one field of one event with a hostile value."""
    field = draw(st.sampled_from(FIELDS))
    value = draw(raw_values)
    return fill(field.event, value), expect(field, value)
