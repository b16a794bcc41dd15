"""A session's settings and how the Realtime API shows and changes them (`session.created`/`session.update`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streaming.engine import Engine
from streaming.output import OUTPUT_RATE
from streaming.vad import TurnConfig


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
    user_id: str | None = None  # whose memory (streaming.memory_lane); None: anonymous, session-only memory


def describe_session(config: SessionConfig, turn: TurnConfig, server_vad: bool, engine: Engine) -> dict[str, Any]:
    """The session object of `session.created`/`session.updated`; `turn` is the detector's live setting,
    `server_vad` whether turns end (and replies start) on the detector's word."""
    td = (
        {
            "type": "server_vad",
            "threshold": turn.threshold,
            "silence_duration_ms": turn.silence_ms,
            "prefix_padding_ms": turn.prefix_ms,
            "min_speech_duration_ms": turn.min_speech_ms,
            "create_response": config.create_response,
            "interrupt_response": config.interrupt_response,
        }
        if server_vad
        else None
    )
    return {
        "model": engine.name,
        "output_modalities": ["audio"],
        "instructions": config.instructions,
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": engine.input_sample_rate}, "turn_detection": td},
            "output": {"format": {"type": "audio/pcm", "rate": OUTPUT_RATE}, "voice": config.voice},
        },
    }


def updated_turn_config(current: TurnConfig, td: dict[str, Any]) -> TurnConfig:
    """`current` with a validated `turn_detection` object's fields (streaming.events._turn_detection)."""
    return TurnConfig(
        threshold=td.get("threshold", current.threshold),
        silence_ms=int(td.get("silence_duration_ms", current.silence_ms)),
        min_speech_ms=int(td.get("min_speech_duration_ms", current.min_speech_ms)),
        prefix_ms=int(td.get("prefix_padding_ms", current.prefix_ms)),
        pause_ms=current.pause_ms,  # not a protocol field: the server's setting stays
    ).validate()
