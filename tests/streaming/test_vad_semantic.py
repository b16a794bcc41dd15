"""The semantic end of turn in the turn detector (omni.streaming.vad): a fake probability source stands in for the
engine's LM and answers each pause after a chosen delay (the device worker's time to recognise and score)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from omni.streaming.frames import SpeechPaused, SpeechStarted, SpeechStopped
from omni.streaming.vad import CHUNK_SECONDS, TurnConfig, TurnDetector

TurnEvent = SpeechStarted | SpeechPaused | SpeechStopped
MS = CHUNK_SECONDS * 1000  # 32 ms per chunk


def run(
    probs: list[float], cfg: TurnConfig, source: Callable[[int], float | None] = lambda _: None, delay: int = 1
) -> tuple[list[TurnEvent], list[bool]]:
    """Feed per-chunk speech probabilities; at the n-th SpeechPaused (n from 0) `source(n)` is the engine's
    probability that the turn is finished, delivered `delay` chunks later (None: the engine says nothing).
    Returns the turn events and, per delivery, whether the detector kept it."""
    d = TurnDetector(cfg)
    events: list[TurnEvent] = []
    due: list[tuple[int, float, float]] = []  # (chunk index to deliver at, probability, pause timestamp)
    kept: list[bool] = []
    for i, p in enumerate(probs):
        for _, prob, paused_at in [x for x in due if x[0] == i]:
            kept.append(d.end_likely(prob, paused_at))
        due = [x for x in due if x[0] != i]
        ev = d.step(p, i * CHUNK_SECONDS, CHUNK_SECONDS)
        if ev is None:
            continue
        events.append(ev)
        if isinstance(ev, SpeechPaused):
            prob = source(sum(isinstance(e, SpeechPaused) for e in events) - 1)
            if prob is not None:
                due.append((i + delay, prob, ev.timestamp))
    return events, kept


SPEECH_THEN_SILENCE = [0.9] * 20 + [0.0] * 30  # 640 ms of speech, then 960 ms of silence
ON = TurnConfig(silence_ms=500, pause_ms=200, semantic_eot=0.5)


def stop_of(events: list[TurnEvent]) -> SpeechStopped:
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    assert len(stops) == 1, events
    return stops[0]


def silence_waited_ms(events: list[TurnEvent]) -> float:
    stop = stop_of(events)
    return (stop.heard_until - stop.timestamp) * 1000


def test_a_finished_message_ends_the_turn_at_the_pause() -> None:
    events, kept = run(SPEECH_THEN_SILENCE, ON, lambda _: 0.9)
    assert [type(e) for e in events] == [SpeechStarted, SpeechPaused, SpeechStopped] and kept == [True]
    stop = stop_of(events)
    assert stop.semantic and stop.timestamp == events[1].timestamp  # the same end of speech as the pause's
    # the pause is said at the first chunk with >= 200 ms of silence (224 ms), the probability comes one chunk
    # later and the turn ends at that chunk: 256 ms of silence instead of 512
    assert silence_waited_ms(events) == pytest.approx(8 * MS)
    full, _ = run(SPEECH_THEN_SILENCE, TurnConfig(silence_ms=500, pause_ms=200, semantic_eot=0.0), lambda _: 0.9)
    assert silence_waited_ms(full) == pytest.approx(16 * MS) and not stop_of(full).semantic  # 0: off


def test_an_unfinished_message_waits_the_full_silence() -> None:
    events, kept = run(SPEECH_THEN_SILENCE, ON, lambda _: 0.1)
    assert kept == [True] and not stop_of(events).semantic
    assert silence_waited_ms(events) == pytest.approx(16 * MS)  # the first chunk with >= 500 ms
    just_below, _ = run(SPEECH_THEN_SILENCE, ON, lambda _: 0.4999)
    assert silence_waited_ms(just_below) == pytest.approx(16 * MS)
    at, _ = run(SPEECH_THEN_SILENCE, ON, lambda _: 0.5)
    assert stop_of(at).semantic  # the threshold itself counts as finished
    silent_engine, kept = run(SPEECH_THEN_SILENCE, ON, lambda _: None)  # engines that cannot tell (tiny, omni)
    assert kept == [] and silence_waited_ms(silent_engine) == pytest.approx(16 * MS)


def test_a_probability_later_than_the_full_silence_is_ignored() -> None:
    # the engine answers 12 chunks after the pause (384 ms): the 500 ms silence has ended the turn by then
    probs = SPEECH_THEN_SILENCE + [0.9] * 20 + [0.0] * 30  # and a second turn, whose pause gets no answer
    events, kept = run(probs, ON, lambda n: 0.9 if n == 0 else None, delay=12)
    assert kept == [False]  # not kept for the turn it was about, nor for the next one
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    assert len(stops) == 2 and not any(s.semantic for s in stops)
    assert [round((s.heard_until - s.timestamp) * 1000 / MS) for s in stops] == [16, 16]


def test_a_probability_for_a_pause_the_user_spoke_after_is_ignored() -> None:
    # 256 ms pause, speech again (the user went on), then the end: the first pause's answer comes after the
    # speech resumed; the second pause's answer says unfinished
    probs = [0.9] * 10 + [0.0] * 8 + [0.9] * 10 + [0.0] * 30
    events, kept = run(probs, ON, lambda n: 0.95 if n == 0 else 0.1, delay=3)
    assert kept == [False, True]
    assert [type(e) for e in events] == [SpeechStarted, SpeechPaused, SpeechPaused, SpeechStopped]
    assert not stop_of(events).semantic and silence_waited_ms(events) == pytest.approx(16 * MS)
    # the same with the answer in time for the first pause: the turn ends there, and what follows is a new turn
    early, kept = run(probs, ON, lambda n: 0.95, delay=1)
    assert kept == [True, True]
    assert [type(e) for e in early] == [SpeechStarted, SpeechPaused, SpeechStopped] * 2


def test_speech_onsets_are_the_same_with_or_without_it() -> None:
    """Barge-in is a SpeechStarted during a reply: the semantic end changes when turns end, never when speech
    is heard to start, nor at which chunk."""
    probs = [0.0] * 5 + [0.9] * 20 + [0.0] * 30 + [0.6, 0.9, 0.9, 0.9, 0.9] + [0.0] * 30

    def onsets(cfg: TurnConfig) -> list[tuple[int, float]]:
        d = TurnDetector(cfg)
        out = []
        for i, p in enumerate(probs):
            ev = d.step(p, i * CHUNK_SECONDS, CHUNK_SECONDS)
            if isinstance(ev, SpeechPaused):
                d.end_likely(0.99, ev.timestamp)  # at once: the earliest possible end
            elif isinstance(ev, SpeechStarted):
                out.append((i, ev.timestamp))
        return out

    on, off = onsets(ON), onsets(TurnConfig(silence_ms=500, pause_ms=200, semantic_eot=0.0))
    assert on == off and len(on) == 2


def test_config_checks_the_threshold() -> None:
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="semantic"):
            TurnConfig(semantic_eot=bad).validate()
    TurnConfig(semantic_eot=0.0).validate()
    TurnConfig(semantic_eot=0.99).validate()
