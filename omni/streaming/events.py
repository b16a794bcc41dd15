"""The OpenAI Realtime event layer, independent of transport (WebRTC data channel, WebSocket).

Client events are parsed into frames (`parse_client_event`); server events are built as JSON-ready dicts by
`RealtimeEvents`, which also numbers them. GA event names are emitted; the older beta names and the beta
`session.update` shape (flat `turn_detection`, `voice`) are accepted from clients. Our own additions use the
`omni.` prefix (e.g. `omni.metrics`). Audio travels as events only on transports without media tracks
(`input_audio_buffer.append` parses to an `AudioFrame`; the session refuses it on WebRTC).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from omni.streaming.frames import (
    MAX_FRAME_SAMPLES,
    AudioFrame,
    InputClear,
    InputCommit,
    Interrupt,
    ResponseRequest,
    SessionUpdate,
    Truncate,
    UserMessage,
)
from omni.streaming.vad import EAGERNESS

ClientAction = (
    ResponseRequest | Interrupt | Truncate | SessionUpdate | UserMessage | AudioFrame | InputCommit | InputClear
)
WIRE_RATE = 24000  # the protocol's audio/pcm rate, both ways (the SDK's AudioPCM.rate is Literal[24000])
MAX_INSTRUCTIONS_CHARS = 8000  # the default bound (omni.app.limits.Limits.max_instructions_chars)
MAX_EVENT_ID_CHARS = 128

# Older (beta) client event names -> GA names. The client event names mostly did not change; beta clients
# also send these.
_CLIENT_ALIASES = {
    "response.cancel": "response.cancel",
    "response.create": "response.create",
    "session.update": "session.update",
    "conversation.item.truncate": "conversation.item.truncate",
    "conversation.item.create": "conversation.item.create",
    "transcription_session.update": "session.update",
}


class ProtocolError(ValueError):
    """A client event we cannot accept; `code` goes into the `error` event. `limit`: the server limit it broke
    (e.g. "instructions"), counted in /metrics as omni_limit_<limit>_refusals_total; None for plain bad input.
    `param`: the refused field's path in the event as Realtime names it (`session.audio.input.turn_detection.
    threshold`, `item.content[0].image_url`), the `error.param` of the answer; None when no one field is at fault
    (unparsable JSON)."""

    def __init__(
        self, code: str, message: str, event_id: str | None = None, limit: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.event_id = event_id
        self.limit = limit
        self.param = param


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def parse_client_event(
    raw: str | bytes | dict[str, Any], max_instructions: int = MAX_INSTRUCTIONS_CHARS
) -> ClientAction | None:
    """One client event -> a frame for the session, or None for events that need no action.

    Raises `ProtocolError` naming what was wrong (bad JSON, missing type, unknown type, bad fields)."""
    event, event_id = _event_object(raw)
    kind = event.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing_type", "event has no string field 'type'", event_id, param="type")
    kind = _CLIENT_ALIASES.get(kind, kind)
    if kind == "response.create":
        response = _optional_obj(event, "response", event_id)
        instructions = response.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ProtocolError("invalid_value", "response.instructions must be a string", event_id,
                                param="response.instructions")
        _check_instructions(instructions, max_instructions, "response.instructions", event_id)
        speech = _speech(response, "response", event_id) if "output_modalities" in response else None
        return ResponseRequest(timestamp=0.0, instructions=instructions, speech=speech)
    if kind == "response.cancel":
        return Interrupt(timestamp=0.0, reason="client_cancel")
    if kind == "conversation.item.truncate":
        item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
        if not isinstance(item_id, str):
            raise ProtocolError("invalid_value", "conversation.item.truncate needs a string item_id", event_id,
                                param="item_id")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise ProtocolError("invalid_value", "conversation.item.truncate needs audio_end_ms, an integer >= 0",
                                event_id, param="audio_end_ms")
        return Truncate(item_id=item_id, audio_end_ms=end_ms)
    if kind == "session.update":
        settings = _session_settings(event.get("session"), event_id)
        _check_instructions(settings.get("instructions"), max_instructions, "session.instructions", event_id)
        return SessionUpdate(settings=settings)
    if kind == "conversation.item.create":
        message = _user_message(event.get("item"), event_id)
        _check_instructions(message.text, max_instructions, "item.content", event_id)
        return message
    if kind == "input_audio_buffer.append":
        return AudioFrame(_pcm16(event.get("audio"), event_id), WIRE_RATE, 0.0)
    if kind == "input_audio_buffer.commit":
        return InputCommit()
    if kind == "input_audio_buffer.clear":
        return InputClear()
    if kind == "output_audio_buffer.clear":
        raise ProtocolError(
            "unsupported_event", "output_audio_buffer.clear is not supported: use response.cancel", event_id,
            param="type",
        )
    raise ProtocolError("unknown_event", f"unknown client event type {short_repr(kind)}", event_id, param="type")


def _event_object(raw: str | bytes | dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The event as a dict, and its event_id if it has a usable one."""
    if isinstance(raw, dict):
        event = raw
    else:
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ProtocolError("invalid_json", f"event is not valid JSON: {e}") from None
        except RecursionError:  # a nesting bomb ([[[[...]]]]): Python's parser gives up at ~1,000 levels
            raise ProtocolError("invalid_json", "event is nested too deeply") from None
    if not isinstance(event, dict):
        raise ProtocolError("invalid_event", f"event must be a JSON object, got {type(event).__name__}")
    if _surrogate_escape(raw):
        _check_unicode(event)
    raw_id = event.get("event_id")
    # echoed in our error events: only a short string, so an echo can never outgrow the peer's message limit
    event_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= MAX_EVENT_ID_CHARS else None
    if raw_id is not None and event_id is None:
        raise ProtocolError("invalid_value", f"event_id must be a string of at most {MAX_EVENT_ID_CHARS} characters",
                            param="event_id")
    return event, event_id


# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): legal JSON, but alone (not in a pair) it decodes to a string
# that is not Unicode text and fails wherever it is encoded (a memory store's user id, a tokenizer, espeak-ng).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _surrogate_escape(raw: str | bytes | dict[str, Any]) -> bool:
    if isinstance(raw, str):
        return _SURROGATE_ESCAPE.search(raw) is not None
    return isinstance(raw, bytes) and _SURROGATE_BYTES.search(raw) is not None


def _check_unicode(event: dict[str, Any]) -> None:
    """Refuse an event with a lone surrogate in any string, naming where (only run when the raw text has a
    surrogate escape; pairs decode to one character and pass)."""
    todo: list[tuple[str, Any]] = [("", event)]
    while todo:
        path, v = todo.pop()
        if isinstance(v, dict):
            todo.extend((f"{path}.{k}" if path else str(k), x) for k, x in v.items())
        elif isinstance(v, list):
            todo.extend((f"{path}[{i}]", x) for i, x in enumerate(v))
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ProtocolError("invalid_value", f"{path} is not valid Unicode text: it has a lone surrogate "
                                    "(\\ud800-\\udfff not in a pair)", param=path) from None


def _check_instructions(text: object, limit: int, name: str, event_id: str | None) -> None:
    if isinstance(text, str) and len(text) > limit:
        raise ProtocolError(
            "invalid_value", f"{name} is {len(text)} characters long; at most {limit} are accepted", event_id,
            limit="instructions", param=name,
        )


def _user_message(item: object, event_id: str | None) -> UserMessage:
    """A user message: `{"type": "message", "role": "user", "content": [...]}` with `input_text` parts (joined)
    and `input_image` parts (`image_url`: a data URL). Other items (assistant messages, audio content, function
    calls) are refused: spoken input arrives as audio (the track or `input_audio_buffer.append`)."""
    if not isinstance(item, dict):
        raise ProtocolError("invalid_value", "conversation.item.create needs an object field 'item'", event_id,
                            param="item")
    for key, want in (("type", "message"), ("role", "user")):
        if item.get(key, "message") != want:
            raise ProtocolError(
                "unsupported_event", "conversation.item.create takes a user message (type message, role user)",
                event_id, param=f"item.{key}",
            )
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise ProtocolError("invalid_value", "the message needs a non-empty list 'content'", event_id,
                            param="item.content")
    texts, images = [], []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        where = f"item.content[{i}]"
        if kind == "input_text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            if not part["image_url"].startswith("data:image/"):
                raise ProtocolError(
                    "invalid_value", "input_image.image_url must be a data URL (data:image/...;base64,...)", event_id,
                    param=f"{where}.image_url",
                )
            images.append(part["image_url"])
        else:
            field = {"input_text": f"{where}.text", "input_image": f"{where}.image_url"}.get(str(kind), where)
            raise ProtocolError(
                "unsupported_event",
                'message content must be {"type": "input_text", "text": "..."} or {"type": "input_image", '
                '"image_url": "data:image/..."} parts',
                event_id, param=field,
            )
    text = " ".join(t.strip() for t in texts if t.strip())
    if not text and not images:
        raise ProtocolError("invalid_value", "the message has no text and no image", event_id, param="item.content")
    item_id = item.get("id")
    return UserMessage(text, item_id if isinstance(item_id, str) and item_id else new_id("item"), images=tuple(images))


def _pcm16(audio: object, event_id: str | None) -> np.ndarray:
    """`input_audio_buffer.append`'s `audio`: base64 of little-endian int16 mono at 24 kHz."""
    if not isinstance(audio, str):
        raise ProtocolError("invalid_value", "input_audio_buffer.append needs a base64 string field 'audio'", event_id,
                            param="audio")
    try:
        raw = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            "invalid_value", "input_audio_buffer.append: 'audio' is not valid base64", event_id, param="audio"
        ) from None
    if not raw or len(raw) % 2:
        raise ProtocolError(
            "invalid_value",
            f"input_audio_buffer.append: pcm16 needs an even, non-zero byte count, got {len(raw)}",
            event_id, param="audio",
        )
    if len(raw) // 2 > MAX_FRAME_SAMPLES:  # the session would drop it: say so
        raise ProtocolError(
            "invalid_value",
            f"input_audio_buffer.append: {len(raw) // 2} samples in one event; at most {MAX_FRAME_SAMPLES} "
            f"({MAX_FRAME_SAMPLES // WIRE_RATE} s) are accepted",
            event_id, param="audio",
        )
    return np.frombuffer(raw, "<i2")


def _speech(obj: dict[str, Any], where: str, event_id: str | None) -> bool:
    """`output_modalities` (of `obj`, the event's field `where`): ["audio"] (speech with its transcript) -> True,
    ["text"] -> False."""
    m = obj.get("output_modalities")
    if m == ["audio"]:
        return True
    if m == ["text"]:
        return False
    raise ProtocolError("invalid_value", f'output_modalities must be ["audio"] or ["text"], got {short_repr(m)}',
                        event_id, param=f"{where}.output_modalities")


def short_repr(value: object, limit: int = 80) -> str:
    """A client's value for an error message, cut so that an echo cannot outgrow the peer's message limit (a
    64 KB event type once came back whole)."""
    text = repr(value) if not isinstance(value, list | dict) or len(value) < 100 else f"a {type(value).__name__}"
    return clip_text(text, limit)


def clip_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters (and "...") when longer: for messages that may quote a client's value."""
    return text if len(text) <= limit else text[:limit] + "..."


def _check_format(fmt: object, where: str, event_id: str | None) -> None:
    if fmt is None:
        return
    f = _obj(fmt)
    if f.get("type") != "audio/pcm" or f.get("rate", WIRE_RATE) != WIRE_RATE:
        raise ProtocolError(
            "invalid_value", f"{where}.format {short_repr(fmt)} is not supported (supported: audio/pcm at 24000 Hz)",
            event_id, param=f"{where}.format",
        )


def _session_settings(session: object, event_id: str | None) -> dict[str, Any]:
    """The settings we act on, from the GA shape (`audio.input.turn_detection`, `audio.output.voice`) or the
    beta shape (flat `turn_detection`, `voice`)."""
    if not isinstance(session, dict):
        raise ProtocolError("invalid_value", "session.update needs an object field 'session'", event_id,
                            param="session")
    out: dict[str, Any] = {}
    audio = _optional_obj(session, "audio", event_id, "session")
    audio_in = _optional_obj(audio, "input", event_id, "session.audio")
    audio_out = _optional_obj(audio, "output", event_id, "session.audio")
    instructions = session.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ProtocolError("invalid_value", "session.instructions must be a string", event_id,
                            param="session.instructions")
    if instructions is not None:
        out["instructions"] = instructions
    if "output_modalities" in session:
        out["speech"] = _speech(session, "session", event_id)
    _check_format(audio_in.get("format"), "session.audio.input", event_id)
    _check_format(audio_out.get("format"), "session.audio.output", event_id)
    user_id = _optional_obj(session, "omni", event_id, "session").get("user_id")  # ours: whose memory
    if user_id is not None:
        if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 128:
            raise ProtocolError("invalid_value", "omni.user_id must be a non-empty string of <= 128 characters",
                                event_id, param="session.omni.user_id")
        out["user_id"] = user_id
    voice_field = "session.audio.output.voice" if "voice" in audio_out else "session.voice"
    voice = audio_out.get("voice", session.get("voice"))
    if voice is not None and not isinstance(voice, str):
        raise ProtocolError("invalid_value", f"{voice_field} must be a string", event_id, param=voice_field)
    if voice is not None:
        out["voice"] = voice
        out["voice_field"] = voice_field  # for the engine's refusal (omni.streaming.session_settings)
    td_field = "session.audio.input.turn_detection" if "turn_detection" in audio_in else "session.turn_detection"
    if "turn_detection" in audio_in or "turn_detection" in session:
        td = audio_in.get("turn_detection", session.get("turn_detection"))
        if td is not None and not isinstance(td, dict):
            raise ProtocolError("invalid_value", "turn_detection must be an object or null", event_id, param=td_field)
        if td is not None and td.get("type", "server_vad") not in ("server_vad", "semantic_vad"):
            raise ProtocolError(
                "invalid_value",
                f"turn_detection type {short_repr(td.get('type'))} is not supported "
                "(supported: server_vad, semantic_vad, or null for manual response.create)",
                event_id, param=f"{td_field}.type",
            )
        out["turn_detection"] = _turn_detection(td, td_field, event_id) if td is not None else None
    return out


def _obj(v: object) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _optional_obj(parent: dict[str, Any], key: str, event_id: str | None, where: str = "") -> dict[str, Any]:
    """`parent[key]`: an object, or {} when absent or null; anything else is refused, naming the field."""
    v = parent.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        field = f"{where}.{key}" if where else key
        raise ProtocolError("invalid_value", f"{field} must be an object", event_id, param=field)
    return v


def _turn_detection(td: dict[str, Any], where: str, event_id: str | None) -> dict[str, Any]:
    """The fields we act on (`where`: the object's path in the event, for errors); `semantic_eot` is the semantic
    end of turn's threshold (omni.streaming.vad): from `semantic_vad`'s `eagerness` (EAGERNESS), 0 (off) for
    `server_vad`."""
    out: dict[str, Any] = {"semantic_eot": 0.0}
    if td.get("type", "server_vad") == "semantic_vad":
        eagerness = td.get("eagerness", "auto")
        if not isinstance(eagerness, str) or eagerness not in EAGERNESS:
            raise ProtocolError("invalid_value", f"turn_detection.eagerness must be one of {', '.join(EAGERNESS)}",
                                event_id, param=f"{where}.eagerness")
        out["semantic_eot"] = EAGERNESS[eagerness]
    v = td.get("threshold", 0.5)
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < v < 1.0:  # 0 or 1: always or never speech
        raise ProtocolError("invalid_value", "turn_detection.threshold must be a number in (0, 1), exclusive",
                            event_id, param=f"{where}.threshold")
    if "threshold" in td:
        out["threshold"] = v
    for key, lo, hi in (
        ("silence_duration_ms", 0, 10000),
        ("prefix_padding_ms", 0, 5000),
        ("min_speech_duration_ms", 0, 5000),
    ):
        if key in td:
            v = td[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise ProtocolError("invalid_value", f"turn_detection.{key} must be a number in [{lo}, {hi}]",
                                    event_id, param=f"{where}.{key}")
            out[key] = v
    for key in ("create_response", "interrupt_response"):
        if key in td:
            if not isinstance(td[key], bool):
                raise ProtocolError("invalid_value", f"turn_detection.{key} must be true or false", event_id,
                                    param=f"{where}.{key}")
            out[key] = td[key]
    return out


def _assistant_item(item_id: str, done: bool, speech: bool, text: str, complete: bool = True) -> dict[str, Any]:
    """An assistant message item: spoken (`output_audio` with its transcript) or text only (`output_text`)."""
    part = {"type": "output_audio", "transcript": text} if speech else {"type": "output_text", "text": text}
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": ("completed" if complete else "incomplete") if done else "in_progress",
        "content": [part] if done else [],
    }


@dataclass
class RealtimeEvents:
    """Builds server events for one session; event ids are numbered per session."""

    session_id: str

    def __post_init__(self) -> None:
        self._n = itertools.count(1)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": f"event_{next(self._n)}", **fields}

    def _part_event(self, kind: str, response_id: str, item_id: str, **fields: Any) -> dict[str, Any]:
        """An event about the reply's one content part (output 0, content 0: a reply has a single item and part)."""
        return self._event(kind, response_id=response_id, item_id=item_id, output_index=0, content_index=0, **fields)

    def session_created(self, config: dict[str, Any]) -> dict[str, Any]:
        return self._event("session.created", session=self._session(config))

    def session_updated(self, config: dict[str, Any]) -> dict[str, Any]:
        return self._event("session.updated", session=self._session(config))

    def _session(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"type": "realtime", "id": self.session_id, "object": "realtime.session", **config}

    def speech_started(self, item_id: str, audio_start_ms: int) -> dict[str, Any]:
        return self._event("input_audio_buffer.speech_started", item_id=item_id, audio_start_ms=audio_start_ms)

    def speech_stopped(self, item_id: str, audio_end_ms: int) -> dict[str, Any]:
        return self._event("input_audio_buffer.speech_stopped", item_id=item_id, audio_end_ms=audio_end_ms)

    def transcription_delta(self, item_id: str, delta: str) -> dict[str, Any]:
        return self._event(
            "conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0, delta=delta
        )

    def transcription_completed(self, item_id: str, transcript: str, seconds: float) -> dict[str, Any]:
        """`seconds`: the turn's audio, as `usage` of the duration kind."""
        return self._event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=transcript,
            usage={"type": "duration", "seconds": round(seconds, 3)},
        )

    def input_committed(self, item_id: str) -> dict[str, Any]:
        return self._event("input_audio_buffer.committed", item_id=item_id, previous_item_id=None)

    def input_cleared(self) -> dict[str, Any]:
        return self._event("input_audio_buffer.cleared")

    def response_created(self, response_id: str) -> dict[str, Any]:
        return self._event(
            "response.created",
            response={"id": response_id, "object": "realtime.response", "status": "in_progress", "output": []},
        )

    def output_item(
        self, response_id: str, item_id: str, done: bool, speech: bool, text: str = "", complete: bool = True
    ) -> dict[str, Any]:
        """`response.output_item.added` (empty, in progress) or `.done` (the whole assistant item; `complete`
        False: a cancelled or failed reply's item, status `incomplete` as in its response.done)."""
        kind = "response.output_item.done" if done else "response.output_item.added"
        item = _assistant_item(item_id, done, speech, text, complete)
        return self._event(kind, response_id=response_id, output_index=0, item=item)

    def content_part(self, response_id: str, item_id: str, done: bool, speech: bool, text: str = "") -> dict[str, Any]:
        """`response.content_part.added` (empty) or `.done` (with the part's words) for the reply's one part."""
        part = {"type": "audio", "transcript": text} if speech else {"type": "text", "text": text}
        kind = "response.content_part.done" if done else "response.content_part.added"
        return self._part_event(kind, response_id, item_id, part=part)

    def part_streams_done(self, response_id: str, item_id: str, speech: bool, text: str) -> list[dict[str, Any]]:
        """The `.done` of each stream the reply's part had, before `response.content_part.done`: its text (sent
        for spoken replies too), and for speech the audio and its transcript."""
        out = [self._part_event("response.output_text.done", response_id, item_id, text=text)]
        if speech:
            out.append(self._part_event("response.output_audio.done", response_id, item_id))
            out.append(self._part_event("response.output_audio_transcript.done", response_id, item_id, transcript=text))
        return out

    def output_audio_delta(self, response_id: str, item_id: str, pcm16: bytes) -> dict[str, Any]:
        """Speech for transports without an audio track: `pcm16` is int16 mono at 24 kHz."""
        delta = base64.b64encode(pcm16).decode("ascii")
        return self._part_event("response.output_audio.delta", response_id, item_id, delta=delta)

    def output_text_delta(self, response_id: str, item_id: str, delta: str) -> dict[str, Any]:
        return self._part_event("response.output_text.delta", response_id, item_id, delta=delta)

    def output_audio_transcript_delta(self, response_id: str, item_id: str, delta: str) -> dict[str, Any]:
        return self._part_event("response.output_audio_transcript.delta", response_id, item_id, delta=delta)

    def response_done(
        self, response_id: str, item_id: str, status: str, text: str, reason: str | None = None, speech: bool = True,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """`reason` for a cancelled reply (`turn_detected`, `client_cancelled`), `error` (type, code, message)
        for a failed one, in `status_details` as the protocol has them."""
        details: dict[str, Any] | None = {"type": status, "reason": reason} if reason else None
        if error is not None:
            details = {"type": status, "error": error}
        item = _assistant_item(item_id, True, speech, text, complete=status == "completed")
        return self._event(
            "response.done",
            response={
                "id": response_id,
                "object": "realtime.response",
                "status": status,
                "status_details": details,
                "output": [item],
            },
        )

    def output_audio_buffer(self, what: str, response_id: str) -> dict[str, Any]:
        """`started`, `stopped` or `cleared` (WebRTC only)."""
        return self._event(f"output_audio_buffer.{what}", response_id=response_id)

    def item_added(self, item_id: str, text: str, images: int = 0, done: bool = False) -> dict[str, Any]:
        """`conversation.item.added` (or `.done`) for a user message: its text, and `images` images (not echoed:
        a data URL can be megabytes)."""
        content: list[dict[str, Any]] = [{"type": "input_image"} for _ in range(images)]
        if text:
            content.append({"type": "input_text", "text": text})
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": content,
        }
        return self._event("conversation.item.done" if done else "conversation.item.added", item=item)

    def item_truncated(self, item_id: str, audio_end_ms: int) -> dict[str, Any]:
        return self._event("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=audio_end_ms)

    def error(
        self,
        code: str,
        message: str,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
        param: str | None = None,
    ) -> dict[str, Any]:
        error = {"type": kind, "code": code, "message": message, "event_id": event_id}
        if param is not None:  # the field of the client's event that was refused, as Realtime names it
            error["param"] = param
        return self._event("error", error=error)

    def metrics(self, fields: dict[str, Any]) -> dict[str, Any]:
        return self._event("omni.metrics", **fields)

    def memory_recalled(self, response_id: str, items: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
        """What the engine recalled for a response's prompt (omni.streaming.memory_lane.recalled_items)."""
        return self._event("omni.memory.recalled", response_id=response_id, items=items, tokens=tokens)
