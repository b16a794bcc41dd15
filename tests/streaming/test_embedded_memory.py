"""Memory end to end through the runtime on the embedded engine (issue 12): a spoken fact pushed out of a small
KV window by typed turns is recalled for a spoken question, again after a restart over the same store, and
never for another user."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omni.memory import Memory, MemoryStore
from omni.model.embedded.piper import PiperSynthesizer
from omni.model.embedded.text_embedding import TextEmbedder
from omni.model.embedded.whisper import WhisperRecognizer
from omni.model.loaders import LoadedLM, load_lm
from omni.model.pcm import resample, to_int16
from omni.streaming.engines.embedded import DEFAULT_SAMPLING, EmbeddedEngine, EmbeddedSession
from omni.streaming.memory_lane import MemoryHub
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad, TurnConfig
from omni.streaming.worker import DeviceWorker
from tests.streaming.harness import Harness
from tests.streaming.test_text_turns import typed

FACT = "My locker code is four seven one nine."
QUESTION = "What is my locker code?"
# Typed turns that share no words with the fact, each ~60-90 tokens with its reply: five of them push turn 1
# out of the 320-token window below.
FILLERS = [
    "Tell me a fun fact about cats.",
    "What is a good name for a goldfish?",
    "How do I boil an egg?",
    "Why is the sky blue?",
    "Suggest a quick breakfast.",
    "What should I pack for a beach trip?",
]
WINDOW = 320
_DIGITS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine".split())}


def digits(text: str) -> str:
    """Spoken digits as digits ("four seven one nine" -> "4719"): the reply is read aloud either way."""
    words = [_DIGITS.get(w, w) for w in re.findall(r"[a-z]+|\d+", text.lower())]
    return re.sub(r"(?<=\d) (?=\d)", "", " ".join(words))


@pytest.fixture(scope="module")
def lm() -> LoadedLM:
    return load_lm()


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder()


@pytest.fixture(scope="module")
def engine(lm: LoadedLM) -> EmbeddedEngine:
    """The embedded engine as served (its own recogniser, Whisper base; its sampling), replies capped at 40 tokens
    and a 320-token window so that a few typed turns push the fact out."""
    return EmbeddedEngine(lm=lm, sampling=replace(DEFAULT_SAMPLING, max_new_tokens=40), window=WINDOW)


@pytest.fixture(scope="module")
def speech() -> dict[str, np.ndarray]:
    """The packaged Piper voice: Whisper base hears espeak-ng's "four seven one nine" as "471.1" in four voices
    and rates, and Piper's as "4719"."""
    voice = PiperSynthesizer(threads=1)
    voice._scales[[0, 2]] = 0.0  # no noise (Piper draws it inside its graph, unseeded): the same speech every run
    pad = np.zeros(8000, np.float32)  # 0.5 s of silence either side, as benchmarks.spoken pads
    return {t: to_int16(np.concatenate([pad, resample(voice.synth(t), voice.sample_rate, 16000), pad]))
            for t in (FACT, QUESTION)}


def open_hub(folder: Path, embedder: TextEmbedder) -> MemoryHub:
    return MemoryHub(Memory(MemoryStore.open(str(folder)), embed=embedder), embedder)


@pytest.fixture
def hub(tmp_path: Path, embedder: TextEmbedder) -> Iterator[MemoryHub]:
    h = open_hub(tmp_path, embedder)
    yield h
    h.close()


def replies(h: Harness[Any]) -> list[dict[str, Any]]:
    return [e for e in h.events if e["type"] == "response.done"]


async def spoken_turn(h: Harness[Any], pcm: np.ndarray) -> dict[str, Any]:
    """Say `pcm` (the VAD ends the turn); the finished response.done, once its speech has played."""
    n = len(replies(h))
    await h.feed(pcm, realtime=False)
    await h.silence(1.0, realtime=False)
    await h.wait_for(lambda e: len(replies(h)) > n)
    await h.wait_for(lambda e: sum(x["type"] == "omni.metrics" for x in h.events) > n)
    return replies(h)[-1]


async def typed_turn(h: Harness[Any], text: str) -> dict[str, Any]:
    n = len(replies(h))
    h.session.handle_client_event(typed(text, f"item_typed{n}"))
    await h.wait_for(lambda e: e["type"] == "conversation.item.added" and e["item"]["id"] == f"item_typed{n}")
    h.session.handle_client_event({"type": "response.create"})
    await h.wait_for(lambda e: len(replies(h)) > n)
    await h.wait_for(lambda e: sum(x["type"] == "omni.metrics" for x in h.events) > n)
    return replies(h)[-1]


def reply_text(done: dict[str, Any]) -> str:
    assert done["response"]["status"] == "completed", done
    return str(done["response"]["output"][0]["content"][0]["transcript"])


def recalled_for(h: Harness[Any], done: dict[str, Any]) -> list[dict[str, Any]]:
    rid = done["response"]["id"]
    found = [e for e in h.events if e["type"] == "omni.memory.recalled" and e["response_id"] == rid]
    return found[0]["items"] if found else []


async def open_call(engine: EmbeddedEngine, worker: DeviceWorker, vad: SileroVad, hub: MemoryHub,
                    user: str | None) -> Harness[Any]:
    cfg = SessionConfig(turn=TurnConfig(silence_ms=700), user_id=user)
    h: Harness[Any] = Harness(engine, worker, vad, cfg)
    h.session.memory = hub
    await h.start()
    return h


async def ask(h: Harness[Any], speech: dict[str, np.ndarray]) -> tuple[str, str, list[dict[str, Any]]]:
    """Ask the question aloud: the answer's transcript and what the engine's recogniser hears of its played speech
    (both with spoken digits as digits), and the items recalled for it."""
    played = len(h.played)
    done = await spoken_turn(h, speech[QUESTION])
    heard = [e["transcript"] for e in h.events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert digits(heard[-1]) == "what is my locker code", heard
    assert any(e["type"] == "output_audio_buffer.started" and e["response_id"] == done["response"]["id"]
               for e in h.events), "the answer was not spoken"
    rid = done["response"]["id"]
    await h.wait_for(lambda e: e["type"] == "output_audio_buffer.stopped" and e["response_id"] == rid)
    pcm = np.concatenate(h.played[played:]).astype(np.float32) / 32768.0  # the fake track's 48 kHz frames
    session = h.session.engine_session
    assert isinstance(session, EmbeddedSession) and session.recognizer is not None
    spoken = WhisperRecognizer(session.recognizer.model).recognize(resample(pcm, 48000, 16000))
    return digits(reply_text(done)), digits(spoken), recalled_for(h, done)


async def test_a_spoken_fact_outlives_the_window_a_restart_and_stays_with_its_user(
    engine: EmbeddedEngine, worker: DeviceWorker, vad: SileroVad, speech: dict[str, np.ndarray], tmp_path: Path,
    embedder: TextEmbedder,
) -> None:
    hub = open_hub(tmp_path, embedder)
    h = await open_call(engine, worker, vad, hub, "alice")
    try:
        await spoken_turn(h, speech[FACT])
        heard = [e["transcript"] for e in h.events
                 if e["type"] == "conversation.item.input_audio_transcription.completed"]
        assert "4719" in digits(heard[0]), f"the recogniser misheard the fact: {heard}"
        es = h.session.engine_session
        assert isinstance(es, EmbeddedSession)
        fact_end = es.chat.state.cache.length  # the fact and its reply lie before this cache position
        for text in FILLERS:
            await typed_turn(h, text)
        cache = es.chat.state.cache
        assert cache.length - WINDOW > fact_end, "the filler turns did not push the fact out of the KV window"
        answer, spoken, items = await ask(h, speech)
        assert any("4719" in digits(it["text"]) for it in items), items
        assert [it["t_start"] for it in items] == sorted(it["t_start"] for it in items)  # in time order
        assert "4719" in answer, answer
        assert "4719" in spoken, (answer, spoken)
    finally:
        await h.close()
        hub.close()

    hub = open_hub(tmp_path, embedder)  # a restarted server: new memory over the same store, new session
    try:
        h = await open_call(engine, worker, vad, hub, "alice")
        try:
            answer, spoken, items = await ask(h, speech)
        finally:
            await h.close()
        assert any("4719" in digits(it["text"]) for it in items), items
        assert "4719" in answer, answer
        assert "4719" in spoken, (answer, spoken)

        h = await open_call(engine, worker, vad, hub, "bob")
        try:
            answer, spoken, items = await ask(h, speech)
        finally:
            await h.close()
        assert not any("4719" in digits(it["text"]) for it in items), items
        assert "4719" not in answer and "4719" not in spoken, (answer, spoken)
    finally:
        hub.close()


class _FixedSlot:
    """A memory lane that recalls the same line for every question (only what `_recalled` reads)."""

    def slot(self, message: str) -> str:
        return "[2026-12-02 18:04, 24 h ago] fact: my locker code is 4719"


def test_a_turn_prepared_at_the_pause_gets_the_same_slot_at_the_end_of_the_turn(lm: LoadedLM) -> None:
    """The slot repeats the system prompt once this turn would push it out of the window; that is decided from
    where the turn starts, so the turn prefilled at the pause (already in the cache at the end of the turn) gets
    the same slot then and is used as it is. Decided from the cache's length, the end of the turn added the prompt
    where the pause had not, near the window's edge, and fed the whole turn again (2.1 s for 330 tokens)."""
    engine = EmbeddedEngine(lm=lm, sampling=replace(DEFAULT_SAMPLING, max_new_tokens=40), window=WINDOW, listen=False)
    session = engine.open_session()
    session.memory = _FixedSlot()  # type: ignore[assignment]
    prompt = session.chat.messages[0]["content"]
    led: list[bool] = []
    for filler in FILLERS * 2:
        at_pause = session._recalled(filler)
        session.chat.prefill_turn(filler, at_pause)
        assert session._recalled(filler) == at_pause, f"the slot changed between the pause and the end ({filler!r})"
        led.append(at_pause.startswith(prompt))
        session.chat.drop_prefilled_turn()
        session.chat.reply(filler)
    assert not led[0] and led[-1], led  # the turns crossed the edge where the prompt starts to lead the slot
    session.close()
