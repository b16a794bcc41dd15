"""One conversation's runtime: stages joined by bounded queues, driven by asyncio, computed on the worker.

```
transport --AudioFrame--> inbox (control lane first, audio DROP_OLDEST) --> input task --media--> AudioInStage
          --VideoFrame--> latest-frame slot (KEEP_LATEST) --> video task (<= 2 fps) --media--> RGB array
                                                                             --worker--> engine.push_video
          --client event--> parse --> inbox control lane (typed user messages --worker--> engine.push_text)
input task: SpeechStarted -> barge-in if a reply is live; turn audio --worker--> EngineFeed (push_audio,
            prepare_turn at a SpeechPaused, end_turn; held back while a reply is live); SpeechStopped -> reply task
reply task --worker--> engine.respond() one step per job (batched with other sessions' steps for a
            omni.streaming.batching.ModelReply) --> text events; speech --media--> 48 kHz
            --> OutputAudio (BLOCK)
transport's audio track <-- OutputAudio.read(960) every 20 ms (flushed on barge-in)
```

Two lanes: `worker` (the device worker) runs every engine session call; `media` (a second small worker thread)
runs resampling, VAD and frame conversion, and never calls the engine. So speech onset is detected and the
output silenced while a model step of any length runs, and one engine session is still never entered from two
threads at once: the input task awaits each media job before it schedules the engine job that follows it.

Every task is kept in `Session._tasks` and cancelled by `close()`; a failing task reports an `error` event,
calls `on_failure` (the transport tears the connection down) and never touches other sessions.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import numpy as np

from omni.model.pcm import StreamingResampler, to_int16
from omni.streaming.audio_in import (
    AudioInStage,
    AudioInState,
    EndTurn,
    EngineFeed,
    FeedOp,
    PrepareTurn,
    StageOutput,
    TurnAudio,
)
from omni.streaming.batching import ModelReply
from omni.streaming.engine import (
    AudioChunk,
    Engine,
    EngineEvent,
    EngineSession,
    Image,
    ReplyDone,
    ResponseOptions,
    TextDelta,
    TranscriptDelta,
    TurnEndLikely,
    Working,
    close_iterator,
)
from omni.streaming.events import ProtocolError, RealtimeEvents, new_id, parse_client_event
from omni.streaming.frames import (
    MAX_FRAME_SAMPLES,
    AudioFrame,
    InputClear,
    InputCommit,
    Interrupt,
    ResponseRequest,
    SessionUpdate,
    SpeechPaused,
    SpeechStarted,
    SpeechStopped,
    Truncate,
    UserMessage,
    VideoFrame,
)
from omni.streaming.media_files import decode_data_url, frame_to_rgb
from omni.streaming.memory_lane import MemoryHub, MemoryLane, UsesMemory, recalled_items
from omni.streaming.metrics import ServerMetrics, TurnMetrics
from omni.streaming.output import OutputAudio
from omni.streaming.queues import BoundedQueue, Inbox, Overflow, QueueClosed
from omni.streaming.reply_ends import Emit, ReplyEnds, Response
from omni.streaming.session_config import SessionConfig, describe_session
from omni.streaming.session_settings import SettingsUpdates
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker, job_owner

log = logging.getLogger(__name__)
InboxItem = AudioFrame | ResponseRequest | Interrupt | Truncate | SessionUpdate | UserMessage | InputCommit | InputClear


class Session(ReplyEnds, SettingsUpdates):
    """The runtime of one conversation (one per connection)."""

    def __init__(
        self,
        engine: Engine,
        worker: DeviceWorker,
        vad: SileroVad,
        emit: Emit,
        config: SessionConfig | None = None,
        metrics: ServerMetrics | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        media: DeviceWorker | None = None,
        memory: MemoryHub | None = None,
    ) -> None:
        """`worker` runs the engine calls; `media` runs audio and image work (None: the worker does it too, and
        barge-in then waits behind model steps); `memory`: the process's memory (None: off), scoped by
        `config.user_id`."""
        self.id = new_id("sess")
        self.engine = engine
        self.worker = worker
        self.media = media or worker
        self.config = config or SessionConfig()
        self.metrics = metrics or ServerMetrics()
        self.events = RealtimeEvents(self.id)
        self.on_failure = on_failure
        self._emit = emit
        self._t0 = time.monotonic()
        self._stage = AudioInStage(vad, engine.input_sample_rate)
        self._audio_state: AudioInState = self._stage.init_state(self.config.turn)
        self._feed = EngineFeed(auto_end_turn=self.config.create_response)
        self.inbox: Inbox[InboxItem] = Inbox(
            BoundedQueue(self.config.input_queue_frames, Overflow.DROP_OLDEST, "input-audio")
        )
        self.video: BoundedQueue[VideoFrame] = BoundedQueue(1, Overflow.KEEP_LATEST, "video")
        self.output = OutputAudio(self.config.output_queue_chunks, self._on_first_audio, self._on_reply_played)
        self._engine_session: EngineSession | None = None
        self.memory = memory
        self.memory_lane: MemoryLane | None = None  # the engine session's, when the engine uses memory
        self._tasks: set[asyncio.Task[None]] = set()
        self._reply: Response | None = None
        self._user_item: str | None = None
        self._pause_at = 0.0  # the last SpeechPaused's timestamp (omni.streaming.vad.TurnDetector.end_likely)
        self._end_p: float | None = None  # the engine's last TurnEndLikely of the open turn
        self._item_responses: dict[str, str] = {}
        self._turns = 0
        self._turn_seconds = 0.0  # audio of the user's open turn given to the engine (transcription usage)
        self._dropped_reported = 0
        self.started = False
        self.closed = False
        self.failure: BaseException | None = None
        self.turn_history: list[TurnMetrics] = []  # the last 32 turns, for tests and benchmarks

    # ---- clock and life cycle ----

    @property
    def engine_session(self) -> EngineSession | None:
        """The engine's state for this conversation (None before `start` and after `close`). Call its methods
        only through the device worker."""
        return self._engine_session

    def clock(self) -> float:
        """Seconds since the session started (the media clock of every timestamp in this session)."""
        return time.monotonic() - self._t0

    async def start(self) -> None:
        self._engine_session = await self.worker.run(self._open_engine_session)
        self.started = True
        await self.worker.run(self._attach_memory, False)
        self.metrics.inc("sessions_total", "sessions started")
        self.metrics.add_gauge("sessions_active", "sessions open now", 1)
        self._emit(self.events.session_created(self.describe()))
        self._spawn(self._input_loop(), "input")
        self._spawn(self._video_loop(), "video")

    def _open_engine_session(self) -> EngineSession:
        return self.engine.open_session(instructions=self.config.instructions, voice=self.config.voice)

    def _attach_memory(self, reopen: bool) -> None:
        """Give the engine session its memory lane (a new one, for the current user id, when `reopen`)."""
        if self.memory is None or not isinstance(self._engine_session, UsesMemory):
            return
        if reopen and self.memory_lane is not None:
            self.memory_lane.close()  # an anonymous lane forgets itself here
            self.memory_lane = None
        if self.memory_lane is None:
            self.memory_lane = self.memory.try_open(self.config.user_id, self.id)
        if self.memory_lane is not None:  # None: the store failed, this session has no long-term memory
            self._engine_session.use_memory(self.memory_lane)

    def describe(self) -> dict[str, Any]:
        """The session as `session.created`/`session.updated` describe it."""
        vad = self._feed.auto_end_turn or self.config.create_response
        return describe_session(self.config, self._audio_state.detector.config, vad, self.engine)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        ctx = contextvars.copy_context()
        ctx.run(job_owner.set, self.id)  # worker jobs of this session's tasks take turns with other sessions'
        task = asyncio.get_running_loop().create_task(self._guard(coro, name), name=f"{self.id}:{name}", context=ctx)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # a task cancelled before its first step never awaits `coro`, which then warns "coroutine ... was never
        # awaited" when collected (a session closed right after start: a sound device that fails to open)
        task.add_done_callback(lambda _: coro.close())
        return task

    async def _guard(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await coro
        except (asyncio.CancelledError, QueueClosed):
            raise
        except Exception as e:  # one session's failure ends that session only
            log.exception("session %s: %s stage failed", self.id, name)
            self.failure = e
            self._emit(
                self.events.error("server_error", f"{name} stage failed: {type(e).__name__}: {e}", kind="server_error")
            )
            self.metrics.inc("session_failures_total", "sessions ended by an internal error")
            if self.on_failure is not None:
                self.on_failure(e)

    @property
    def replying(self) -> bool:
        """A reply is being generated or played."""
        return self._reply is not None

    @property
    def tasks(self) -> frozenset[asyncio.Task[None]]:
        return frozenset(self._tasks)

    async def close(self) -> None:
        """Cancel every task, flush queues and release the engine session. Idempotent."""
        if self.closed:
            return
        self.closed = True
        tasks = list(self._tasks)
        if self._reply is not None and self._reply.task is not None:
            tasks.append(self._reply.task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.inbox.close()
        self.video.close()
        self.output.close()
        reply, self._reply = self._reply, None
        engine_session, self._engine_session = self._engine_session, None
        if engine_session is not None and self.worker.running:
            try:
                await asyncio.wait_for(self.worker.run(self._close_engine, reply, engine_session), 30.0)
            except Exception:
                log.exception("session %s: closing the engine session failed", self.id)
        lane, self.memory_lane = self.memory_lane, None
        if lane is not None:  # flushes the memory's writer: seconds at worst, so neither loop nor device worker
            try:
                await asyncio.to_thread(lane.close)
            except Exception:
                log.exception("session %s: closing its memory failed", self.id)
        if self.started:
            self.metrics.add_gauge("sessions_active", "sessions open now", -1)

    @staticmethod
    def _close_engine(reply: Response | None, engine_session: EngineSession) -> None:
        if reply is not None:
            close_iterator(reply.iterator)
        engine_session.close()

    # ---- inputs from the transport (event loop, never block) ----

    def push_audio(self, frame: AudioFrame) -> None:
        if self.closed:
            return
        if not _usable_frame(frame):  # dropped, not fatal: the input stage would fail on it and end the session
            self.metrics.inc("bad_input_frames_total", "input audio frames dropped: bad rate, size or channels")
            return
        if frame.pcm.dtype.kind == "f" and not np.isfinite(frame.pcm).all():
            frame = AudioFrame(np.nan_to_num(frame.pcm, posinf=1.0, neginf=-1.0), frame.sample_rate, frame.timestamp,
                               frame.channels)
        self.inbox.put_media(frame)

    def push_video(self, frame: VideoFrame) -> None:
        if not self.closed:
            self.video.put_nowait(frame)

    def handle_client_event(self, raw: str | bytes | dict[str, Any]) -> None:
        """A client event from the transport; a bad one is answered with an `error` event."""
        if self.closed:
            return
        try:
            action = parse_client_event(raw, self.config.max_instructions_chars)
        except ProtocolError as e:
            if e.limit is not None:  # the same counter name as omni.app.limits.count_refusal's
                what = f"requests or events refused by the {e.limit} limit"
                self.metrics.inc(f"limit_{e.limit}_refusals_total", what)
            self._emit(self.events.error(e.code, str(e), e.event_id, param=e.param))
            return
        if isinstance(action, AudioFrame):
            if not self.config.audio_over_events:
                self._emit(
                    self.events.error(
                        "unsupported_event", "input_audio_buffer.append: audio comes from the WebRTC track here"
                    )
                )
            else:
                self.push_audio(dataclasses.replace(action, timestamp=self.clock()))
        elif action is not None:
            try:
                self.inbox.put_control(action)
            except asyncio.QueueFull:
                self._emit(self.events.error("rate_limited", "too many client events waiting; try again"))

    def read_output(self, n: int) -> np.ndarray | None:
        """The next `n` samples of assistant speech (int16, 48 kHz), or None when nothing is playing."""
        return self.output.read(n)

    async def next_audio_event(self) -> dict[str, Any]:
        """For transports that carry speech as events (WebSocket): the next `response.output_audio.delta` (int16
        at `config.output_rate`), as soon as the engine made it. Events a reply's end causes (`response.done`)
        are emitted inside the next call, after the caller sent this one."""
        response_id, pcm = await self.output.next_chunk()
        item_id = next((i for i, r in self._item_responses.items() if r == response_id), response_id)
        return self.events.output_audio_delta(response_id, item_id, pcm.astype("<i2").tobytes())

    # ---- input stage ----

    async def _input_loop(self) -> None:
        while True:
            item = await self.inbox.get()
            if isinstance(item, AudioFrame):
                frames = [item]
                while len(self.inbox.media) and not len(self.inbox.control):
                    frames.append(self.inbox.media.get_nowait())  # type: ignore[arg-type]
                out = await self.media.run(self._stage.process, self._audio_state, frames)
                await self._handle_stage_output(out)
            else:
                await self._handle_control(item)

    async def _handle_stage_output(self, out: list[StageOutput]) -> None:
        """Turn events at once (barge-in never waits for the engine); turn audio to the engine in order."""
        turn_end: SpeechStopped | None = None
        ops: list[FeedOp] = self._feed.release()
        for ev in out:
            if isinstance(ev, SpeechStarted):
                if self._reply is None:  # transcripts of earlier audio belong to the previous item
                    await self._feed_engine(ops)
                self._user_item = new_id("item")
                self._emit(self.events.speech_started(self._user_item, int(ev.timestamp * 1000)))
                if self._reply is not None and self.config.interrupt_response:
                    await self._interrupt(ev.timestamp, "barge_in")
                    ops.extend(self._feed.release())
            elif isinstance(ev, TurnAudio):
                self._turn_seconds += len(ev.pcm) / self.engine.input_sample_rate
                audio = self._feed.route(ev, self.engine.input_sample_rate)
                if audio is not None:
                    ops.append(audio)
            elif isinstance(ev, SpeechPaused):
                # The turn may be ending: the engine can finish recognition and prefill now, in the silence
                # the detector still waits for. Only for turns that will get a reply.
                if self._feed.auto_end_turn and self.config.create_response and not self._feed.hold:
                    ops.append(PrepareTurn())
                    self._pause_at = ev.timestamp  # what the engine's TurnEndLikely will be about
            elif isinstance(ev, SpeechStopped):
                await self._feed_engine(ops)
                self._emit(self.events.speech_stopped(self._user_item or new_id("item"), int(ev.timestamp * 1000)))
                if self.config.create_response:
                    turn_end = ev
                if self._feed.auto_end_turn and not self._feed.hold:
                    await self._feed_engine([EndTurn()])
        await self._feed_engine(ops)
        dropped = self.inbox.media.dropped
        if dropped > self._dropped_reported:
            self.metrics.inc(
                "dropped_input_frames_total",
                "input audio frames dropped by a full queue",
                dropped - self._dropped_reported,
            )
            self._dropped_reported = dropped
        if turn_end is not None and self._reply is None:
            self._start_reply(turn_end.timestamp, heard_until=turn_end.heard_until, semantic=turn_end.semantic)

    async def _feed_engine(self, ops: list[FeedOp]) -> None:
        """Run `ops` on the device worker (emptying the list) and report the transcripts they produced."""
        if not ops:
            return
        assert self._engine_session is not None
        batch = list(ops)
        ops.clear()
        for ev in await self.worker.run(self._feed.run, self._engine_session, batch):
            if isinstance(ev, TurnEndLikely):  # the detector ends the turn early if it is still that pause
                self._audio_state.detector.end_likely(ev.probability, self._pause_at)
                self._end_p = ev.probability  # the turn's last, kept or late (omni.metrics)
            elif isinstance(ev, TranscriptDelta):
                item = self._user_item or new_id("item")
                if ev.final:
                    self._emit(self.events.transcription_completed(item, ev.text, self._turn_seconds))
                    self._turn_seconds = 0.0
                else:
                    self._emit(self.events.transcription_delta(item, ev.text))

    async def _handle_control(self, item: InboxItem) -> None:
        if isinstance(item, ResponseRequest):
            if self._reply is not None:
                self._emit(
                    self.events.error(
                        "conversation_already_has_active_response",
                        "a response is in progress; cancel it first (response.cancel)",
                    )
                )
                return
            await self._feed_engine([*self._feed.release(), EndTurn()])
            if self._reply is None:
                speech = self.config.speech if item.speech is None else item.speech
                self._start_reply(None, ResponseOptions(speech, item.instructions))
        elif isinstance(item, Interrupt):
            if self._reply is None:
                self._emit(self.events.error("response_cancel_not_active", "no response is in progress"))
                return
            await self._interrupt(self.clock(), item.reason)
        elif isinstance(item, Truncate):
            await self._truncate(item)
        elif isinstance(item, SessionUpdate):
            await self._update(item.settings)
        elif isinstance(item, UserMessage):
            await self._add_user_message(item)
        elif isinstance(item, InputCommit):
            await self._commit_input()
        elif isinstance(item, InputClear):
            await self._clear_input()

    async def _commit_input(self) -> None:
        """The turn's final transcript now; response.create answers it. The audio appended before the commit
        waits in the media lane (control is served first): it goes through the audio stage first."""
        pending = [f for f in self.inbox.media.drain() if isinstance(f, AudioFrame)]
        if pending:
            await self._handle_stage_output(await self.media.run(self._stage.process, self._audio_state, pending))
        if not self._feed.turn_open and not self._feed.held:
            self._emit(self.events.error("input_audio_buffer_commit_empty", "no audio was appended since the last "
                                         "commit (or the last turn the server ended)"))
            return
        item_id = self._user_item or new_id("item")
        await self._feed_engine([*self._feed.release(), EndTurn()])
        self._emit(self.events.input_committed(item_id))
        self._user_item = None

    async def _clear_input(self) -> None:
        """`input_audio_buffer.clear`: every piece of the uncommitted audio goes, wherever it is: waiting in the
        media lane, inside the audio stage (the detector starts over: a turn it had opened is forgotten), held back
        during a reply, and already in the engine's open turn (`discard_audio`). Typed messages stay."""
        self.inbox.media.flush()
        self._feed.held.clear()
        self._feed.held_seconds = 0.0
        self._audio_state = self._stage.init_state(self._audio_state.detector.config)  # no media job runs now
        if self._feed.turn_open:
            assert self._engine_session is not None
            await self.worker.run(self._engine_session.discard_audio)
            self._feed.turn_open = False
        self._turn_seconds, self._end_p, self._user_item = 0.0, None, None
        self._emit(self.events.input_cleared())

    async def _add_user_message(self, m: UserMessage) -> None:
        """A typed message joins the user's turn after the audio before it; `response.create` answers it."""
        if self._reply is not None:  # an engine never gets user input in the middle of its own reply
            self._emit(
                self.events.error(
                    "conversation_already_has_active_response",
                    "a response is in progress; add the message once it is done (or cancel it: response.cancel)",
                )
            )
            return
        await self._feed_engine(self._feed.release())
        assert self._engine_session is not None
        try:  # engines see the message's images before its text ("what is in this picture?")
            images = [await self.media.run(decode_data_url, url, self.config.video_max_side) for url in m.images]
        except ValueError as e:
            self._emit(self.events.error("invalid_value", f"input_image: {e}"))
            return
        for image in images:
            await self.worker.run(self._engine_session.push_media, Image(image))
        if m.text:
            await self.worker.run(self._engine_session.push_text, m.text)
        self._emit(self.events.item_added(m.item_id, m.text, len(images)))
        self._emit(self.events.item_added(m.item_id, m.text, len(images), done=True))

    # ---- replies ----

    def _start_reply(self, end_of_speech: float | None, options: ResponseOptions | None = None, *,
                     heard_until: float | None = None, semantic: bool = False) -> None:
        self._turns += 1
        self._feed.hold = True  # new user audio waits until this reply is over
        self._end_p, end_p = None, self._end_p
        m = TurnMetrics(
            turn=self._turns,
            end_of_speech=end_of_speech,
            turn_end_heard=heard_until,
            semantic_end=semantic,
            end_probability=end_p,
            response_start=self.clock(),
            dropped_input_frames=self.inbox.media.dropped,
        )
        reply = Response(new_id("resp"), new_id("item"), m, options or ResponseOptions(self.config.speech))
        self._reply = reply
        self._item_responses[reply.item_id] = reply.response_id
        while len(self._item_responses) > 4:  # truncation concerns the last few replies only (as OutputAudio.logs)
            del self._item_responses[next(iter(self._item_responses))]
        self._emit(self.events.response_created(reply.response_id))
        self._emit(self.events.output_item(reply.response_id, reply.item_id, False, reply.options.speech))
        self._emit(self.events.content_part(reply.response_id, reply.item_id, False, reply.options.speech))
        job = self._guard_reply(reply)
        reply.task = asyncio.get_running_loop().create_task(self._guard(job, "reply"), name=f"{self.id}:reply")
        # a response.cancel right after response.create cancels the task before it ran: close its coroutine
        # (else a "coroutine was never awaited" warning when it is collected)
        reply.task.add_done_callback(lambda _: job.close())

    async def _guard_reply(self, reply: Response) -> None:
        """An engine failure or a stalled step ends this reply with an error; the session goes on."""
        try:
            await self._generate(reply)
        except TimeoutError:
            await self._fail_reply(reply, f"an engine step took over {self.config.step_timeout:g} s", stalled=True)
        except (ValueError, RuntimeError, ArithmeticError, LookupError, TypeError, AttributeError, OSError) as e:
            log.exception("session %s: the engine failed in a reply", self.id)
            await self._fail_reply(reply, f"{type(e).__name__}: {e}", stalled=False)

    async def _generate(self, reply: Response) -> None:
        assert self._engine_session is not None
        reply.iterator = await self.worker.run(self._engine_session.respond, reply.options)
        resampler = StreamingResampler(self.engine.output_sample_rate, self.config.output_rate)
        while not reply.generated:
            # The timeout makes a stalled step (a hung engine) an error instead of a silent hang. Not
            # asyncio.wait_for: on Python 3.11 it returns the step's result when a cancel (barge-in) arrives
            # after the step finished but before this task resumed, swallowing the cancel, and the reply then
            # went on decoding into the cache that the interrupt was about to roll back.
            async with asyncio.timeout(self.config.step_timeout):
                if isinstance(reply.iterator, ModelReply):  # batched with other sessions' steps
                    ev, seconds = await self.worker.run_batched(reply.iterator.batcher, reply.iterator)
                else:
                    ev, seconds = await self.worker.run(_step, reply.iterator)
            reply.metrics.compute_seconds += seconds
            recall = self.memory_lane.take_recalled() if self.memory_lane is not None else None
            if recall is not None:  # the engine recalled at the turn's start (its worker job is over)
                self._emit(self.events.memory_recalled(reply.response_id, recalled_items(recall), recall.tokens))
            if ev is None or isinstance(ev, ReplyDone):
                reply.generated = True
                pcm = await self.media.run(_resample_out, resampler, None)
                if len(pcm):
                    await self.output.put(reply.response_id, AudioChunk(pcm))
            elif isinstance(ev, Working):  # a long prompt between two chunks: other sessions' jobs ran meanwhile
                continue
            elif isinstance(ev, TextDelta):
                if reply.metrics.first_text is None:
                    reply.metrics.first_text = self.clock()
                reply.text.append(ev.text)
                self._emit(self.events.output_text_delta(reply.response_id, reply.item_id, ev.text))
            elif isinstance(ev, AudioChunk):
                reply.metrics.audio_seconds += len(ev.pcm) / self.engine.output_sample_rate
                pcm = await self.media.run(_resample_out, resampler, ev.pcm)
                await self.output.put(reply.response_id, AudioChunk(pcm, ev.text))
                if ev.text:
                    self._emit(self.events.output_audio_transcript_delta(reply.response_id, reply.item_id, ev.text))
        await self.output.put(reply.response_id, None)
        if not self.config.audio_over_events:  # over events, the reply's last audio delta must go first
            self._emit_done(reply, "completed")

    # ---- video stage ----

    async def _video_loop(self) -> None:
        while True:
            frame = await self.video.get()
            assert self._engine_session is not None
            image = frame.image
            if not isinstance(image, np.ndarray):  # an av.VideoFrame from the transport: scale and convert
                image = await self.media.run(frame_to_rgb, image, self.config.video_max_side)
            await self.worker.run(self._engine_session.push_video, image, frame.timestamp)
            await asyncio.sleep(self.config.video_interval)


def _usable_frame(frame: AudioFrame) -> bool:
    """What the input stage takes (omni.streaming.audio_in): 8-192 kHz, at most 10 s a frame (a transport gives
    10-60 ms), int16 or float32, mono or stereo, laid out as omni.model.pcm.planar reads it. A 6-channel frame once
    failed the input stage and ended its session."""
    pcm, ch = frame.pcm, frame.channels
    if not 8000 <= frame.sample_rate <= 192000 or pcm.size > MAX_FRAME_SAMPLES or ch not in (1, 2):
        return False
    if pcm.dtype not in (np.int16, np.float32):
        return False
    if pcm.ndim == 2 and pcm.shape[0] == ch:
        return True
    return (pcm.ndim == 1 or pcm.ndim == 2 and pcm.shape[0] == 1) and pcm.size % ch == 0


def _step(it: Iterator[EngineEvent]) -> tuple[EngineEvent | None, float]:
    t0 = time.perf_counter()
    ev = next(it, None)
    return ev, time.perf_counter() - t0


def _resample_out(resampler: StreamingResampler, pcm: np.ndarray | None) -> np.ndarray:
    """Engine float32 speech -> int16 at 48 kHz; `pcm=None` flushes the resampler's tail."""
    return to_int16(resampler.flush() if pcm is None else resampler.push(pcm))
