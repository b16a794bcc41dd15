"""The OpenAI Realtime event layer, independent of transport (WebRTC data channel today, WebSocket later).

Client events are parsed into frames (`parse_client_event`); server events are built as JSON-ready dicts by
`RealtimeEvents`, which also numbers them. GA event names are emitted; the older beta names and the beta
`session.update` shape (flat `turn_detection`, `voice`) are accepted from clients. Our own additions use the
`omni.` prefix (e.g. `omni.metrics`).
"""

from __future__ import annotations

import itertools
import json
import secrets
from dataclasses import dataclass
from typing import Any

from streaming.frames import Interrupt, ResponseRequest, SessionUpdate, Truncate, UserMessage

ClientAction = ResponseRequest | Interrupt | Truncate | SessionUpdate | UserMessage

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
    """A client event we cannot accept; `code` goes into the `error` event."""

    def __init__(self, code: str, message: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.event_id = event_id


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def parse_client_event(raw: str | bytes | dict[str, Any]) -> ClientAction | None:
    """One client event -> a frame for the session, or None for events that need no action.

    Raises `ProtocolError` naming what was wrong (bad JSON, missing type, unknown type, bad fields)."""
    if isinstance(raw, dict):
        event = raw
    else:
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ProtocolError("invalid_json", f"event is not valid JSON: {e}") from None
    if not isinstance(event, dict):
        raise ProtocolError("invalid_event", f"event must be a JSON object, got {type(event).__name__}")
    event_id = event.get("event_id")
    kind = event.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing_type", "event has no string field 'type'", event_id)
    kind = _CLIENT_ALIASES.get(kind, kind)
    if kind == "response.create":
        response = event.get("response") or {}
        instructions = response.get("instructions") if isinstance(response, dict) else None
        return ResponseRequest(timestamp=0.0, instructions=instructions if isinstance(instructions, str) else None)
    if kind == "response.cancel":
        return Interrupt(timestamp=0.0, reason="client_cancel")
    if kind == "conversation.item.truncate":
        item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
        if not isinstance(item_id, str) or not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise ProtocolError(
                "invalid_value",
                "conversation.item.truncate needs item_id (string) and audio_end_ms (integer >= 0)",
                event_id,
            )
        return Truncate(item_id=item_id, audio_end_ms=end_ms)
    if kind == "session.update":
        return SessionUpdate(settings=_session_settings(event.get("session"), event_id))
    if kind == "conversation.item.create":
        return _user_message(event.get("item"), event_id)
    if kind in (
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "output_audio_buffer.clear",
    ):
        raise ProtocolError(
            "unsupported_event",
            f"{kind} is not supported over this transport: audio comes from the WebRTC track and turns from server VAD",
            event_id,
        )
    raise ProtocolError("unknown_event", f"unknown client event type {kind!r}", event_id)


def _user_message(item: object, event_id: str | None) -> UserMessage:
    """A typed user message: `{"type": "message", "role": "user", "content": [{"type": "input_text", "text":
    ...}, ...]}`; its text parts are joined. Other items (assistant messages, audio content, function calls)
    are refused: audio comes from the WebRTC track."""
    if not isinstance(item, dict) or item.get("type", "message") != "message" or item.get("role") != "user":
        raise ProtocolError(
            "unsupported_event", "conversation.item.create takes a user message (type message, role user)", event_id
        )
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise ProtocolError("invalid_value", "the message needs a non-empty list 'content'", event_id)
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "input_text" or not isinstance(part.get("text"), str):
            raise ProtocolError(
                "unsupported_event",
                'message content must be {"type": "input_text", "text": "..."} parts: audio comes from the track',
                event_id,
            )
        texts.append(part["text"])
    text = " ".join(t.strip() for t in texts if t.strip())
    if not text:
        raise ProtocolError("invalid_value", "the message has no text", event_id)
    item_id = item.get("id")
    return UserMessage(text, item_id if isinstance(item_id, str) and item_id else new_id("item"))


def _session_settings(session: object, event_id: str | None) -> dict[str, Any]:
    """The settings we act on, from the GA shape (`audio.input.turn_detection`, `audio.output.voice`) or the
    beta shape (flat `turn_detection`, `voice`)."""
    if not isinstance(session, dict):
        raise ProtocolError("invalid_value", "session.update needs an object field 'session'", event_id)
    out: dict[str, Any] = {}
    audio = _obj(session.get("audio"))
    audio_in, audio_out = _obj(audio.get("input")), _obj(audio.get("output"))
    if isinstance(session.get("instructions"), str):
        out["instructions"] = session["instructions"]
    user_id = _obj(session.get("omni")).get("user_id")  # ours: whose memory (streaming.memory_lane)
    if user_id is not None:
        if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 128:
            raise ProtocolError("invalid_value", "omni.user_id must be a non-empty string of <= 128 characters",
                                event_id)
        out["user_id"] = user_id
    voice = audio_out.get("voice", session.get("voice"))
    if isinstance(voice, str):
        out["voice"] = voice
    has_td = "turn_detection" in audio_in or "turn_detection" in session
    if has_td:
        td = audio_in.get("turn_detection", session.get("turn_detection"))
        if td is not None and not isinstance(td, dict):
            raise ProtocolError("invalid_value", "turn_detection must be an object or null", event_id)
        if td is not None and td.get("type", "server_vad") != "server_vad":
            raise ProtocolError(
                "invalid_value",
                f"turn_detection type {td.get('type')!r} is not supported "
                "(supported: server_vad, or null for manual response.create)",
                event_id,
            )
        out["turn_detection"] = _turn_detection(td, event_id) if td is not None else None
    return out


def _obj(v: object) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _turn_detection(td: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, lo, hi in (
        ("threshold", 0.0, 1.0),
        ("silence_duration_ms", 0, 10000),
        ("prefix_padding_ms", 0, 5000),
        ("min_speech_duration_ms", 0, 5000),
    ):
        if key in td:
            v = td[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise ProtocolError("invalid_value", f"turn_detection.{key} must be a number in [{lo}, {hi}]", event_id)
            out[key] = v
    for key in ("create_response", "interrupt_response"):
        if key in td:
            if not isinstance(td[key], bool):
                raise ProtocolError("invalid_value", f"turn_detection.{key} must be true or false", event_id)
            out[key] = td[key]
    return out


@dataclass
class RealtimeEvents:
    """Builds server events for one session; event ids are numbered per session."""

    session_id: str

    def __post_init__(self) -> None:
        self._n = itertools.count(1)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": f"event_{next(self._n)}", **fields}

    def session_created(self, config: dict[str, Any]) -> dict[str, Any]:
        return self._event("session.created", session={"id": self.session_id, "object": "realtime.session", **config})

    def session_updated(self, config: dict[str, Any]) -> dict[str, Any]:
        return self._event("session.updated", session={"id": self.session_id, "object": "realtime.session", **config})

    def speech_started(self, item_id: str, audio_start_ms: int) -> dict[str, Any]:
        return self._event("input_audio_buffer.speech_started", item_id=item_id, audio_start_ms=audio_start_ms)

    def speech_stopped(self, item_id: str, audio_end_ms: int) -> dict[str, Any]:
        return self._event("input_audio_buffer.speech_stopped", item_id=item_id, audio_end_ms=audio_end_ms)

    def transcription_delta(self, item_id: str, delta: str) -> dict[str, Any]:
        return self._event(
            "conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0, delta=delta
        )

    def transcription_completed(self, item_id: str, transcript: str) -> dict[str, Any]:
        return self._event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=transcript,
        )

    def response_created(self, response_id: str) -> dict[str, Any]:
        return self._event(
            "response.created",
            response={"id": response_id, "object": "realtime.response", "status": "in_progress", "output": []},
        )

    def output_text_delta(self, response_id: str, item_id: str, delta: str) -> dict[str, Any]:
        return self._event(
            "response.output_text.delta",
            response_id=response_id,
            item_id=item_id,
            output_index=0,
            content_index=0,
            delta=delta,
        )

    def output_audio_transcript_delta(self, response_id: str, item_id: str, delta: str) -> dict[str, Any]:
        return self._event(
            "response.output_audio_transcript.delta",
            response_id=response_id,
            item_id=item_id,
            output_index=0,
            content_index=0,
            delta=delta,
        )

    def response_done(
        self, response_id: str, item_id: str, status: str, text: str, reason: str | None = None
    ) -> dict[str, Any]:
        details = {"type": status, "reason": reason} if reason else None
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "completed" if status == "completed" else "incomplete",
            "content": [{"type": "output_audio", "transcript": text}],
        }
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

    def item_added(self, item_id: str, text: str, done: bool = False) -> dict[str, Any]:
        """`conversation.item.added` (or `.done`) for a typed user message."""
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": text}],
        }
        return self._event("conversation.item.done" if done else "conversation.item.added", item=item)

    def item_truncated(self, item_id: str, audio_end_ms: int) -> dict[str, Any]:
        return self._event("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=audio_end_ms)

    def error(
        self, code: str, message: str, event_id: str | None = None, kind: str = "invalid_request_error"
    ) -> dict[str, Any]:
        return self._event("error", error={"type": kind, "code": code, "message": message, "event_id": event_id})

    def metrics(self, fields: dict[str, Any]) -> dict[str, Any]:
        return self._event("omni.metrics", **fields)

    def memory_recalled(self, response_id: str, items: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
        """What the engine recalled for a response's prompt (streaming.memory_lane.recalled_items)."""
        return self._event("omni.memory.recalled", response_id=response_id, items=items, tokens=tokens)
