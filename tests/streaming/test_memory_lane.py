"""The runtime's memory glue (omni.streaming.memory_lane) on a real SQLite store with the model-free HashingEmbedder:
the slot, what goes below and when, replies as heard, anonymous sessions, the session.update field and the event."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from omni.memory import Memory, MemoryConfig, MemoryStore, SegmenterConfig
from omni.memory.testing import HashingEmbedder
from omni.streaming.engines.tone import ToneEngine
from omni.streaming.events import ProtocolError, parse_client_event
from omni.streaming.frames import SessionUpdate
from omni.streaming.memory_lane import SLOT_HEADER, MemoryHub, MemoryLane, SlotEcho, recalled_items
from omni.streaming.session import Session
from omni.streaming.session_config import SessionConfig
from omni.streaming.vad import SileroVad
from omni.streaming.worker import DeviceWorker


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[MemoryHub]:
    embed = HashingEmbedder()
    h = MemoryHub(Memory(MemoryStore.open(str(tmp_path / "mem")), embed=embed), embed)
    yield h
    h.close()


def notes(hub: MemoryHub, user: str) -> list[tuple[str, str]]:
    hub.memory.flush()
    return [(n.kind, n.text) for n in hub.memory.store.load_notes(user)]


def test_a_fact_comes_back_in_the_slot_under_its_header_once_per_turn(hub: MemoryHub) -> None:
    lane = hub.open("alice", "s1")
    lane.user_turn("My locker code is 4719.", 0)
    lane.user_turn("Tell me about cats.", 30)
    hub.memory.flush()
    assert lane.slot("   ") == "" and lane.take_recalled() is None
    slot = lane.slot("What is my locker code?")
    lines = slot.splitlines()
    assert lines[0] == SLOT_HEADER
    assert any("fact: My locker code is 4719." in line for line in lines[1:])
    recall = lane.take_recalled()
    assert recall is not None and lane.take_recalled() is None
    items = recalled_items(recall)
    assert {"text", "t_start", "t_end", "level", "score"} <= set(items[0])
    assert [i["t_start"] for i in items] == sorted(i["t_start"] for i in items)
    lane.close()


def test_the_slot_quotes_the_user_not_the_assistant(hub: MemoryHub) -> None:
    lane = hub.open("alice", "s1")
    lane.user_turn("Hello.", 0)
    lane.reply("I have no locker code for you, sorry.", 10)
    lane.user_turn("Bye.", 20)  # the reply is final now
    lane.roll_up(cache_length=40, window=32, lookahead=100)  # everything leaves the window: notes of both turns
    hub.memory.flush()
    slot = lane.slot("locker code for you")
    recall = lane.take_recalled()
    assert ("turn", "assistant: I have no locker code for you, sorry.") in notes(hub, "alice")
    assert "assistant" not in slot
    assert recall is not None and all(not it.text.startswith("assistant: ") for it in recall.items)
    lane.close()


def test_items_with_line_breaks_come_back_one_line_each(hub: MemoryHub) -> None:
    # The embedded soak's replies had line breaks ("1. ...\n2. ..."): the slot's one-line-per-item reading then
    # failed every later turn that recalled them (ValueError from a strict zip), ending the reply with an error.
    lane = hub.open("alice", "s1")
    lane.user_turn("Name two\ncolours of\u2028the sea.", 0)
    lane.reply("1. Blue\n2. Green\r\n3. Grey\x1c", 10)
    lane.user_turn("Thanks.", 20)
    lane.roll_up(cache_length=40, window=32, lookahead=100)
    hub.memory.flush()
    slot = lane.slot("colours of the sea")
    recall = lane.take_recalled()
    assert recall is not None and recall.items
    assert len(recall.text.splitlines()) == 1 + len(recall.items)
    assert all(len(it.text.splitlines()) == 1 for it in recall.items)
    assert "Name two colours of the sea." in slot and "Blue" not in slot
    lane.close()


def test_text_goes_to_l3_before_the_window_would_drop_it(hub: MemoryHub) -> None:
    lane = hub.open("alice", "s1")
    lane.user_turn("First words here.", 0)
    lane.user_turn("Second words here.", 100)
    lane.user_turn("Third words here.", 200)
    # A 256-token window holding 300 tokens, 60 more to come: what starts before 104 must go below now.
    lane.roll_up(cache_length=300, window=256, lookahead=60)
    turns = [t for k, t in notes(hub, "alice") if k == "turn"]
    assert turns == ["user: First words here.", "user: Second words here."]
    lane.close()  # the rest of the window goes below at the end of the session
    assert "user: Third words here." in [t for k, t in notes(hub, "alice") if k == "turn"]


def test_a_reply_cut_by_barge_in_is_remembered_as_heard(hub: MemoryHub) -> None:
    lane = hub.open("alice", "s1")
    lane.user_turn("Tell me a story.", 0)
    lane.reply("Once upon a time there was a dragon who loved tea.", 10)
    lane.heard("Once upon a time")
    lane.close()
    said = [u.text for e in hub.memory.store.load_events("alice") for u in e.utterances if u.role == "assistant"]
    assert said == ["Once upon a time"]


def test_an_anonymous_lane_forgets_at_close_and_a_named_one_keeps(hub: MemoryHub) -> None:
    anon = hub.open(None, "s-anon")
    anon.user_turn("My name is Sam.", 0)
    named = hub.open("bob", "s-bob")
    named.user_turn("My name is Bob.", 0)
    anon.close()
    named.close()
    users = [u[0] for u in hub.memory.store.users()]
    assert users == ["bob"]
    with pytest.raises(ValueError, match="non-empty"):
        hub.open("  ", "s2")


def test_session_update_takes_a_user_id_and_checks_it() -> None:
    ev = parse_client_event({"type": "session.update", "session": {"omni": {"user_id": "alice"}}})
    assert isinstance(ev, SessionUpdate) and ev.settings["user_id"] == "alice"
    for bad in ("", 7, "x" * 129):
        with pytest.raises(ProtocolError, match="omni.user_id"):
            parse_client_event({"type": "session.update", "session": {"omni": {"user_id": bad}}})


async def test_an_engine_without_memory_gets_no_lane(hub: MemoryHub, worker: DeviceWorker, vad: SileroVad) -> None:
    session = Session(ToneEngine(), worker, vad, lambda e: None, SessionConfig(user_id="alice"), memory=hub)
    await session.start()
    try:
        assert session.memory_lane is None
        await asyncio.sleep(0)  # its tasks start
    finally:
        await session.close()


def test_lane_type_is_what_engines_receive(hub: MemoryHub) -> None:
    lane = hub.open("alice", "s1")
    assert isinstance(lane, MemoryLane) and lane.user_id == "alice"
    lane.close()
    lane.close()  # idempotent


@pytest.mark.parametrize("written", [False, True], ids=["open-event", "written-event"])
def test_a_truncate_after_the_reply_was_final_revises_the_remembered_reply(tmp_path: Path, written: bool) -> None:
    """`conversation.item.truncate` can come after the user spoke again (the reply is final in memory by then): the
    remembered reply becomes the heard text, in the open event or in the written one (its text key too), and the
    text rolled up to L3 later is the heard text."""
    embed = HashingEmbedder()
    config = MemoryConfig(segmenter=SegmenterConfig(min_turn_s=0.0 if written else 1e9))
    hub = MemoryHub(Memory(MemoryStore.open(str(tmp_path / "mem")), embed=embed, config=config), embed)
    lane = hub.open("alice", "s1")
    lane.user_turn("Tell me a story.", 0)
    lane.reply("Once upon a time there was a dragon who loved tea.", 10)
    lane.user_turn("Stop.", 20)  # the reply is final: written with the event when `written`
    hub.memory.flush()
    stored = [u.text for e in hub.memory.store.load_events("alice") for u in e.utterances]
    assert ("Once upon a time there was a dragon who loved tea." in stored) == written
    lane.heard("Once upon a time")
    hub.memory.flush()
    if written:
        recall = lane.handle.recall(embed(["dragon loved tea"])[0], "dragon loved tea", 256)
        assert not any(it.level == "L1" for it in recall.items)  # the unheard words no longer find it
    lane.roll_up(cache_length=1000, window=10, lookahead=0)
    lane.close()
    said = [u.text for e in hub.memory.store.load_events("alice") for u in e.utterances if u.role == "assistant"]
    assert said == ["Once upon a time"]
    assert "assistant: Once upon a time" in [t for k, t in notes(hub, "alice") if k == "turn"]
    assert not any("dragon" in t for _, t in notes(hub, "alice"))
    hub.close()


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_a_reply_that_reads_a_slot_line_back_loses_its_stamp_and_label(chunk: int) -> None:
    """SmolLM2 answered "[2026-12-03 16:41:44, 49 s ago] fact: My gym locker number is 3852" (fact_recall.py):
    the stamp and label go, however the reply is cut into deltas; other text, brackets without digits and words
    that only start like a label pass unchanged."""
    reply = ("[2026-12-03 16:41:44, 49 s ago] fact: My gym locker number is 3852.\n"
             "[2026-12-31 18:59:52, 2 s ago] user: My zip code is 30542.\n"
             "[laughs] Factual, as ever: user data is safe. [12:03] ")
    echo = SlotEcho()
    out = "".join(echo.push(reply[i : i + chunk]) for i in range(0, len(reply), chunk)) + echo.flush()
    assert out == ("My gym locker number is 3852.\nMy zip code is 30542.\n"
                   "[laughs] Factual, as ever: user data is safe. [12:03] ")
    assert echo.dropped == ("[2026-12-03 16:41:44, 49 s ago] fact: [2026-12-31 18:59:52, 2 s ago] user: ")
    plain = SlotEcho()
    assert plain.push("Your code is 4719.") == "Your code is 4719." and plain.flush() == ""
    held = SlotEcho()
    assert held.push("fa") == "" and held.push("st food") == "fast food" and held.flush() == ""
    assert held.push("[2026-12-03 16:41") == "" and held.flush() == "[2026-12-03 16:41"  # unfinished: kept
