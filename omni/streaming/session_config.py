"""A session's settings and how the Realtime API shows and changes them (`session.created`/`session.update`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omni.streaming.engine import Engine
from omni.streaming.events import WIRE_RATE
from omni.streaming.output import OUTPUT_RATE
from omni.streaming.vad import EAGERNESS, TurnConfig


@dataclass
class SessionConfig:
    turn: TurnConfig = field(default_factory=TurnConfig)
    create_response: bool = True  # server VAD starts a reply at the end of a turn
    interrupt_response: bool = True  # user speech during a reply cancels it (barge-in)
    input_queue_frames: int = 500  # 10 s of 20 ms frames before the oldest is dropped (and counted)
    output_queue_chunks: int = 64
    video_interval: float = 0.5  # at most 2 frames/s reach the engine
    video_max_side: int = 640
    instructions: str | None = None
    voice: str | None = None
    speech: bool = True  # output modalities: audio (with its transcript), or text only
    # How audio travels: False, on media tracks (WebRTC: the transport paces 20 ms frames at `output_rate`);
    # True, as Realtime events (WebSocket: `input_audio_buffer.append` in, `response.output_audio.delta` out at
    # 24 kHz, sent as fast as the client reads them; `response.done` follows the reply's last audio delta).
    audio_over_events: bool = False
    output_rate: int = OUTPUT_RATE  # the rate OutputAudio holds: 48 kHz for the track, 24 kHz for events
    # Whose memory (omni.streaming.memory_lane): the API key's user when keys are on (omni.app.auth), else the client's
    # user_id; None: anonymous, session-only memory.
    user_id: str | None = None
    user_fixed: bool = False  # the user comes from the API key: a client's `omni.user_id` is refused
    max_instructions_chars: int = 8000  # longer instructions are refused (a 200 KB prompt once prefilled for 213 s)
    step_timeout: float = 60.0  # an engine step running longer ends the reply with an error (a stalled engine)


def describe_session(config: SessionConfig, turn: TurnConfig, server_vad: bool, engine: Engine) -> dict[str, Any]:
    """The session object of `session.created`/`session.updated`; `turn` is the detector's live setting,
    `server_vad` whether turns end (and replies start) on the detector's word."""
    td: dict[str, Any] | None = None
    # semantic_vad only where the engine judges ends of turn (omni.streaming.engine.TurnEndLikely): elsewhere the
    # turn ends after the silence, and says so
    semantic = turn.semantic_eot > 0 and getattr(engine, "judges_turn_end", False)
    if server_vad and semantic:  # the eagerness whose threshold it is ("auto" for another one)
        eagerness = next((k for k, v in EAGERNESS.items() if v == turn.semantic_eot and k != "auto"), "auto")
        td = {"type": "semantic_vad", "eagerness": eagerness}
    elif server_vad:
        td = {
            "type": "server_vad",
            "threshold": turn.threshold,
            "silence_duration_ms": turn.silence_ms,
            "prefix_padding_ms": turn.prefix_ms,
            "min_speech_duration_ms": turn.min_speech_ms,
        }
    if td is not None:
        td |= {"create_response": config.create_response, "interrupt_response": config.interrupt_response}
    return {
        "model": engine.name,
        "output_modalities": ["audio"] if config.speech else ["text"],
        "instructions": config.instructions,
        # audio/pcm at 24 kHz is the protocol's event audio (WebSocket); WebRTC's tracks carry Opus whatever it says
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": WIRE_RATE}, "turn_detection": td},
            "output": {"format": {"type": "audio/pcm", "rate": WIRE_RATE}, "voice": config.voice},
        },
    }


def updated_turn_config(current: TurnConfig, td: dict[str, Any]) -> TurnConfig:
    """`current` with a validated `turn_detection` object's fields (omni.streaming.events._turn_detection)."""
    return TurnConfig(
        threshold=td.get("threshold", current.threshold),
        silence_ms=int(td.get("silence_duration_ms", current.silence_ms)),
        min_speech_ms=int(td.get("min_speech_duration_ms", current.min_speech_ms)),
        prefix_ms=int(td.get("prefix_padding_ms", current.prefix_ms)),
        pause_ms=current.pause_ms,  # not a protocol field: the server's setting stays
        semantic_eot=td.get("semantic_eot", current.semantic_eot),
    ).validate()
