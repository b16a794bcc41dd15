"""The omni engine's reply: a family session's reply events (TokenText, PCMChunk, ReplyRecord) as engine events.

The Talker gives no alignment of codes to text, so `AudioChunk.text` is an estimate: the reply text up to the
word that `chars_per_second` of speech reaches by the end of the chunk (text without spaces is cut at the
estimate itself); the rest of the text comes with an empty chunk after the last audio, so the
whole text counts as played once all the audio has played.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omni.model.conversation import ReplyRecord, ThinkerMark, TokenText
from omni.model.lm.batch import PoolStep
from omni.model.token2wav.streaming import PCMChunk
from omni.streaming.engine import AudioChunk, EngineEvent, LiveReply, ReplyDone, TextDelta


@dataclass
class OmniReply(LiveReply[ThinkerMark]):
    """`LiveReply` (mark: right after <|im_start|>assistant\\n; a SessionMark of both caches when speaking),
    plus its events and how much of its text and audio has gone out."""

    events: Iterator[EngineEvent] | None = None
    said: int = 0  # characters of `text` already attached to audio chunks
    samples: int = 0
    input_after: bool = False  # user input was prefilled after the reply

    def take_spoken(self, sample_rate: int, chars_per_second: float, *, final: bool) -> str:
        """The reply text newly covered by the audio made so far (whole words, at `chars_per_second`)."""
        if final:
            end = len(self.text)
        else:
            end = min(len(self.text), int(self.samples / sample_rate * chars_per_second))
            word = self.text.rfind(" ", self.said, end) + 1
            end = word if word > self.said else end  # back to a word start, where the text has spaces
        piece = self.text[self.said : max(end, self.said)]
        self.said = max(end, self.said)
        return piece


@dataclass(frozen=True)
class ReplyOutput:
    """How a reply's audio leaves: whether it is sent (`speech`), its rate and the speaking rate for its text."""

    speech: bool
    sample_rate: int
    chars_per_second: float


def reply_events(
    reply: OmniReply,
    start: Callable[[], Generator[Any, Any, None]],
    out: ReplyOutput,
    finished: Callable[[OmniReply], None],
) -> Generator[EngineEvent | PoolStep, Any, None]:
    """The events of the session reply that `start()` opens (its `respond_steps`), and its decode steps
    (`PoolStep`) for the driver to run (omni/streaming/batching.py). `finished(reply)` runs once the whole text is
    out, before `ReplyDone`. Closing this closes the session's reply (which then feeds its turn end)."""
    t0 = time.perf_counter()
    first_text = first_audio = 0.0
    with torch.inference_mode():
        inner = start()
    send: Any = None
    try:
        while True:
            with torch.inference_mode():
                try:
                    ev = inner.send(send)
                except StopIteration:
                    ev = None
            send = None
            if isinstance(ev, PoolStep):
                send = yield ev
                continue
            if isinstance(ev, TokenText):
                first_text = first_text or time.perf_counter() - t0
                reply.text += ev.text
                yield TextDelta(ev.text)
            elif isinstance(ev, PCMChunk):
                first_audio = first_audio or time.perf_counter() - t0
                pcm = ev.samples.detach().float().cpu().numpy()
                reply.samples += len(pcm)
                if out.speech:
                    yield AudioChunk(pcm, text=reply.take_spoken(out.sample_rate, out.chars_per_second, final=False))
            elif isinstance(ev, ReplyRecord):
                yield from _finish(reply, ev, out, finished)
                stats = {
                    "new_tokens": float(len(ev.token_ids)),
                    "codes": float(len(ev.codes)),
                    "first_token_s": first_text,
                    "first_audio_s": first_audio,
                    "speech_s": ev.samples / out.sample_rate,
                    "reply_s": time.perf_counter() - t0,
                }
                yield ReplyDone(reply.text, stats)
                return
            else:
                return
    finally:
        with torch.inference_mode():
            inner.close()  # a cut reply: the session feeds its turn end (interrupt then rolls it back)


def _finish(
    reply: OmniReply, record: ReplyRecord, out: ReplyOutput, finished: Callable[[OmniReply], None]
) -> Iterator[EngineEvent]:
    """The text the detokenizer held back and the text after the last audio, then the reply is closed."""
    if record.text.startswith(reply.text) and len(record.text) > len(reply.text):
        tail = record.text[len(reply.text) :]  # bytes the detokenizer held back (an unfinished character)
        reply.text += tail
        yield TextDelta(tail)
    rest = reply.take_spoken(out.sample_rate, out.chars_per_second, final=True)
    if rest and out.speech:  # the text after the last audio, played once all the audio has played
        yield AudioChunk(np.zeros(0, np.float32), text=rest)
    reply.open = False
    finished(reply)
