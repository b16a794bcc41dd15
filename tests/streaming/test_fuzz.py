"""Property-based fuzzing of the client protocol and the media input (hypothesis).

Fixed seed (derandomize) and a bounded example count so the suite is repeatable and quick; set
OMNI_FUZZ_EXAMPLES (e.g. 2000) for a longer run. Invariants: no exception escapes for client input and no
traceback is logged, each bad event is answered by an `error` event whose `param` names the field at fault
(tests/streaming/fuzz_cases.py holds the hostile values and the answers the protocol promises), the session
stays usable, and a second session beside it is unaffected. The same cases go over the real transports in
tests/app/test_fuzz_transports.py.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import math
import warnings
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from benchmarks.rtc_client import WAIT, wait_for_event
from omni.streaming.engines.tone import ToneEngine
from omni.streaming.events import ProtocolError, parse_client_event
from omni.streaming.frames import MAX_FRAME_SAMPLES, AudioFrame, VideoFrame
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker
from tests.streaming.fuzz_cases import FIELDS, FUZZ, HOSTILE_VALUES, Expect, expect, field_cases, fill
from tests.streaming.harness import Harness

TYPES = ["session.update", "response.create", "response.cancel", "conversation.item.truncate",
         "conversation.item.create", "input_audio_buffer.append", "transcription_session.update"]
TD_KEYS = ["threshold", "silence_duration_ms", "prefix_padding_ms", "min_speech_duration_ms", "create_response",
           "interrupt_response", "eagerness", "type"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0x80), max_size=20),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=20)
turn_detection = st.dictionaries(st.sampled_from(TD_KEYS), values, max_size=4)
session_obj = st.fixed_dictionaries({}, optional={
    "instructions": st.one_of(values, st.text(max_size=200)),
    "turn_detection": st.one_of(st.none(), turn_detection, values),
    "voice": values,
    "audio": st.fixed_dictionaries({}, optional={"input": st.fixed_dictionaries({}, optional={
        "turn_detection": st.one_of(st.none(), turn_detection)})}),
})
events = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(TYPES)}, optional={
        "session": st.one_of(session_obj, values), "item": values, "item_id": values, "audio_end_ms": values,
        "response": values, "event_id": values,
    }),
    st.dictionaries(st.text(max_size=10), values, max_size=4),
    values,
)


def encode(event: Any) -> str:
    try:
        return json.dumps(event, ensure_ascii=False, allow_nan=True)
    except (ValueError, RecursionError):
        return "{"


@FUZZ
@given(key=st.sampled_from(TD_KEYS[:-1]), value=values)
def test_a_bad_turn_detection_field_is_named(key: str, value: Any) -> None:
    event = {"type": "session.update", "session": {"turn_detection": {"type": "server_vad", key: value}}}
    try:
        action = parse_client_event(encode(event))
    except ProtocolError as e:
        named = e.code == "invalid_value" and e.param == f"session.turn_detection.{key}" and key in str(e)
        assert named or e.code == "invalid_json" and e.param is None, (e.code, e.param, str(e))
        return
    assert action is not None  # accepted: then the value is one the detector takes
    settings_ = action.settings["turn_detection"]  # type: ignore[union-attr]
    if key == "threshold":
        assert 0.0 < settings_[key] < 1.0


def check_answer(raw: str, want: Expect) -> str | None:
    """What is wrong with the protocol check's answer to `raw` (None: it is the promised one)."""
    try:
        parse_client_event(raw)
    except ProtocolError as e:
        if want.accepted:
            return f"refused ({e.code}, param {e.param}: {e}) but the protocol takes it"
        if want.code and e.code != want.code:
            return f"code {e.code}, expected {want.code}"
        if (e.param or "") != want.param:
            return f"error.param {e.param!r}, expected {want.param!r} ({e})"
        return None
    return None if want.accepted else f"accepted, expected an error naming {want.param!r}"


def test_every_field_with_every_hostile_value_is_named() -> None:
    """The whole table, not a sample: each field of FIELDS with each of HOSTILE_VALUES (NaN/Infinity literals,
    1e308, huge and negative integers, 10,000-deep nesting, NUL, RTL marks, emoji, lone surrogates...)."""
    wrong = []
    for field in FIELDS:
        for value in HOSTILE_VALUES:
            problem = check_answer(fill(field.event, value), expect(field, value))
            if problem is not None:
                wrong.append(f"{field.param} = {value[:40]}: {problem}")
    assert not wrong, "\n".join(wrong)


@FUZZ
@given(case=field_cases())
def test_a_bad_field_is_named_by_error_param(case: tuple[str, Expect]) -> None:
    raw, want = case
    problem = check_answer(raw, want)
    assert problem is None, (raw[:300], problem)


@FUZZ
@given(raw=st.one_of(events.map(encode), st.text(max_size=200), st.binary(max_size=200)))
def test_parse_never_raises_anything_but_a_protocol_error(raw: str | bytes) -> None:
    try:
        parse_client_event(raw)
    except ProtocolError as e:
        assert str(e) and e.code


async def usable(h: Harness[Any]) -> None:
    """The session answers a response.create with a completed reply (after any reply the fuzz started)."""
    h.session.handle_client_event({"type": "response.cancel"})
    for _ in range(200):
        if not h.session.replying:
            break
        await asyncio.sleep(0.01)
    start = len(h.events)
    h.session.handle_client_event({"type": "response.create"})
    done = await wait_for_event(h.events, h._changed, "response.done", WAIT, start)
    assert done["response"]["status"] == "completed"


def run_beside(worker: DeviceWorker, vad: SileroVad, media: DeviceWorker, attack: Any) -> None:
    """Run `attack(harness)` on one session while a second one on the same workers replies; both stay usable."""

    async def scenario() -> None:
        cfg = SessionConfig(create_response=False)
        a = Harness(ToneEngine(seconds_per_char=0.002), worker, vad, cfg, media=media)
        b = Harness(ToneEngine(seconds_per_char=0.002), worker, vad, SessionConfig(create_response=False), media=media)
        await a.start(play=True)
        await b.start(play=True)
        try:
            await asyncio.gather(attack(a), usable(b))
            await usable(a)
            assert a.session.failure is None and b.session.failure is None
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


@FUZZ
@given(batch=st.lists(events, min_size=1, max_size=6))
def test_fuzzed_events_leave_the_session_usable(
    batch: list[Any], worker: DeviceWorker, vad: SileroVad, media: DeviceWorker, caplog: pytest.LogCaptureFixture
) -> None:
    async def attack(h: Harness[Any]) -> None:
        for event in batch:
            before = len(h.events)
            h.session.handle_client_event(encode(event))
            if not isinstance(event, dict) or event.get("type") not in TYPES:
                assert h.events[before:] and h.events[before]["type"] == "error"  # answered at once
            await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR):
        run_beside(worker, vad, media, attack)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged for client input"


samples = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([math.nan, math.inf, -math.inf, 0.0])
)


def video_frame(kind: str, size: tuple[int, int]) -> Any:
    """A camera frame of odd size: an RGB array (as tests push) or an av.VideoFrame in `kind`'s pixel format (as
    the WebRTC track gives, converted on the media worker)."""
    h, w = size
    if kind == "array":
        return np.zeros((h, w, 3), np.uint8)
    return av.VideoFrame(w, h, kind)


@FUZZ
@given(
    rate=st.one_of(st.sampled_from([8000, 16000, 44100, 48000]), st.integers(min_value=-5, max_value=400_000)),
    n=st.sampled_from([0, 1, 7, 960, 48000 * 3, 10 * 192000 + 1, 4_000_000]),
    fill_=samples,
    channels=st.sampled_from([0, 1, 2, 3, 6]),
    packed=st.booleans(),
    video=st.tuples(st.sampled_from(["array", "yuv420p", "rgb24", "gray", "nv12", "rgba"]),
                    st.tuples(st.sampled_from([1, 2, 3, 17, 641, 4097]), st.sampled_from([1, 3, 5, 480, 4097]))),
)
@example(rate=48000, n=960, fill_=0.0, channels=6, packed=False, video=("array", (3, 5)))  # failed the input stage
@example(rate=48000, n=7, fill_=math.nan, channels=2, packed=True, video=("yuv420p", (1, 4097)))  # 7 do not split
def test_fuzzed_media_leaves_the_session_usable(
    rate: int, n: int, fill_: float, channels: int, packed: bool, video: tuple[str, tuple[int, int]],
    worker: DeviceWorker, vad: SileroVad, media: DeviceWorker, caplog: pytest.LogCaptureFixture,
) -> None:
    """NaN/inf samples, wrong rates, zero-length and giant frames, channel counts that do not divide the samples
    (`packed`: one row of interleaved samples, as aiortc gives s16), odd video sizes and pixel formats."""

    async def attack(h: Harness[Any]) -> None:
        pcm = np.full(n, fill_, np.float32)
        h.session.push_audio(AudioFrame(pcm, rate, h.session.clock()))
        shape = (1, n) if packed else (max(channels, 1), n)
        h.session.push_audio(AudioFrame(np.zeros(shape, np.int16), rate, h.session.clock(), channels=channels))
        h.session.push_video(VideoFrame(video_frame(*video), h.session.clock()))
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING):
        run_beside(worker, vad, media, attack)
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, tracebacks


def test_cancel_right_after_create_leaves_no_coroutine_unawaited(
    worker: DeviceWorker, vad: SileroVad, media: DeviceWorker
) -> None:
    """Found by the transport fuzz: a response.cancel handled before the reply task's first step cancelled it
    unstarted, and its coroutine warned "was never awaited" when collected."""

    async def scenario() -> None:
        h = Harness(ToneEngine(seconds_per_char=0.002), worker, vad, SessionConfig(create_response=False), media=media)
        await h.start(play=True)
        try:
            for _ in range(5):
                h.session.handle_client_event({"type": "response.create"})
                await asyncio.sleep(0)
                await asyncio.sleep(0)  # the control lane has started the reply; its task has not run yet
                h.session.handle_client_event({"type": "response.cancel"})
                await asyncio.sleep(0.05)
        finally:
            await h.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(scenario())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]


def test_an_append_the_session_would_drop_is_refused_naming_audio() -> None:
    """Over 80 s of audio in one append (more than one frame may carry) was dropped without a word."""
    ok = {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(2 * MAX_FRAME_SAMPLES)).decode()}
    assert isinstance(parse_client_event(json.dumps(ok)), AudioFrame)
    big = {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(2 * MAX_FRAME_SAMPLES + 2)).decode()}
    with pytest.raises(ProtocolError) as info:
        parse_client_event(json.dumps(big))
    assert info.value.param == "audio" and str(MAX_FRAME_SAMPLES) in str(info.value)
