"""How a session's replies end: played out, interrupted (barge-in, `response.cancel`) or truncated by the
client (`conversation.item.truncate`). `Session` (omni.streaming.session) inherits these steps; they share its
state, declared below, and run on the event loop (engine calls go through the device worker)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from omni.streaming.audio_in import EngineFeed
from omni.streaming.engine import EngineEvent, EngineSession, ResponseOptions, close_iterator
from omni.streaming.events import RealtimeEvents, short_repr
from omni.streaming.frames import Truncate
from omni.streaming.metrics import ServerMetrics, TurnMetrics
from omni.streaming.output import OutputAudio
from omni.streaming.session_config import SessionConfig
from omni.streaming.worker import DeviceWorker

Emit = Callable[[dict[str, Any]], None]
log = logging.getLogger(__name__)


def _log_cleanup(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cleaning up after a stalled reply failed: %r", task.exception())


@dataclass
class Response:
    """The runtime's side of one reply (a Realtime response): its ids, metrics, task and engine iterator."""

    response_id: str
    item_id: str
    metrics: TurnMetrics
    options: ResponseOptions
    task: asyncio.Task[None] | None = None
    iterator: Iterator[EngineEvent] | None = None
    generated: bool = False  # the engine finished generating (ReplyDone)
    closed: bool = False  # its closing events (the part's and item's .done, response.done) went out
    text: list[str] = field(default_factory=list)


class ReplyEnds:
    """The end of a reply's life, as steps of `Session`."""

    _reply: Response | None
    _engine_session: EngineSession | None
    _emit: Emit
    _feed: EngineFeed
    _item_responses: dict[str, str]
    events: RealtimeEvents
    config: SessionConfig
    output: OutputAudio
    worker: DeviceWorker
    metrics: ServerMetrics
    turn_history: list[TurnMetrics]
    clock: Callable[[], float]

    def _on_first_audio(self, response_id: str) -> None:
        reply = self._reply
        if reply is not None and reply.response_id == response_id and reply.metrics.first_audio is None:
            reply.metrics.first_audio = self.clock()
            if not self.config.audio_over_events:  # output_audio_buffer.* are WebRTC events
                self._emit(self.events.output_audio_buffer("started", response_id))

    def _on_reply_played(self, response_id: str) -> None:
        reply = self._reply
        if reply is None or reply.response_id != response_id:
            return
        if self.config.audio_over_events:
            self._emit_done(reply, "completed")
        else:
            self._emit(self.events.output_audio_buffer("stopped", response_id))
        self._finish_reply(reply)
        self._feed.hold = False  # held user audio goes in with the next audio job

    def _emit_done(self, reply: Response, status: str, text: str | None = None, reason: str | None = None,
                   error: dict[str, str] | None = None) -> None:
        """The part's streams' `.done` events, `response.content_part.done`, the reply item's
        `response.output_item.done`, then `response.done` (the protocol's order), once per reply, whether it
        completed, was cancelled or failed."""
        if reply.closed:
            return
        reply.closed = True
        text = "".join(reply.text) if text is None else text
        rid, speech = reply.response_id, reply.options.speech
        for ev in self.events.part_streams_done(rid, reply.item_id, speech, text):
            self._emit(ev)
        self._emit(self.events.content_part(rid, reply.item_id, True, speech, text))
        self._emit(self.events.output_item(rid, reply.item_id, True, speech, text, complete=status == "completed"))
        self._emit(self.events.response_done(rid, reply.item_id, status, text, reason, speech, error))

    def _finish_reply(self, reply: Response) -> None:
        self._reply = None
        self.turn_history.append(reply.metrics)
        del self.turn_history[:-32]
        self.metrics.observe_turn(reply.metrics)
        self._emit(self.events.metrics(reply.metrics.as_event_fields()))

    async def _interrupt(self, onset: float, reason: str, played_until: int | None = None) -> None:
        """Stop the live reply: silence the output now, then cancel generation and trim the engine's history."""
        reply = self._reply
        if reply is None:
            return
        self.output.flush()
        stopped = self.clock()
        if reply.task is not None:
            reply.task.cancel()
        log_ = self.output.log_for(reply.response_id)
        played = log_.text_until(played_until) if played_until is not None else log_.played_text()
        m = reply.metrics
        m.interrupted = True
        if reason == "barge_in":
            m.barge_in_seconds = stopped - onset
        if not self.config.audio_over_events:
            self._emit(self.events.output_audio_buffer("cleared", reply.response_id))
        if not reply.generated or self.config.audio_over_events:  # over events, done waits for the last delta
            status_reason = "turn_detected" if reason == "barge_in" else "client_cancelled"
            self._emit_done(reply, "cancelled", played, status_reason)
        self._finish_reply(reply)
        if reply.task is not None:
            await asyncio.gather(reply.task, return_exceptions=True)
        await self.worker.run(self._interrupt_engine, reply, played)
        self._feed.hold = False

    async def _fail_reply(self, reply: Response, why: str, stalled: bool) -> None:
        """End a reply the engine failed on: an `error` and a `failed` response.done, and the session goes on.
        A stalled step still holds the worker, so its clean-up job is queued behind it, not awaited."""
        if self._reply is not reply:
            return
        played = self.output.log_for(reply.response_id).played_text()
        self.output.flush()
        code, message = ("engine_timeout" if stalled else "engine_error"), f"the reply failed: {why}"
        self._emit(self.events.error(code, message, kind="server_error"))
        self._emit_done(reply, "failed", played, error={"type": "server_error", "code": code, "message": message})
        self.metrics.inc("reply_failures_total", "replies ended by an engine error or a stalled engine step")
        self._finish_reply(reply)
        cleanup = asyncio.ensure_future(self.worker.run(self._interrupt_engine, reply, played))
        self._feed.hold = False
        if not stalled:
            await cleanup
        else:
            cleanup.add_done_callback(_log_cleanup)

    def _interrupt_engine(self, reply: Response, played: str) -> None:
        close_iterator(reply.iterator)
        if self._engine_session is not None:
            self._engine_session.interrupt(played)

    async def _truncate(self, t: Truncate) -> None:
        reply = self._reply
        sample = t.audio_end_ms * self.config.output_rate // 1000
        if reply is not None and reply.item_id == t.item_id:
            await self._interrupt(self.clock(), "client_truncate", played_until=sample)
        else:
            rid = self._item_responses.get(t.item_id)
            play_log = self.output.logs.get(rid) if rid is not None else None
            if play_log is None or not play_log.spans:
                self._emit(
                    self.events.error(
                        "item_truncate_invalid_item_id",
                        f"no assistant item {short_repr(t.item_id)} with audio in this session",
                        param="item_id",
                    )
                )
                return
            if t.item_id != next(reversed(self._item_responses)):
                # The engine's history has no item ids: `interrupt` trims its newest reply, which is another item.
                self._emit(
                    self.events.error(
                        "item_truncate_invalid_item_id",
                        f"assistant item {short_repr(t.item_id)} is not the latest reply: only the latest reply can be "
                        "truncated",
                        param="item_id",
                    )
                )
                return
            assert self._engine_session is not None
            await self.worker.run(self._engine_session.interrupt, play_log.text_until(sample))
        self._emit(self.events.item_truncated(t.item_id, t.audio_end_ms))
