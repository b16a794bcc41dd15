"""Persistence on both backends: restart identity, schema versions, forget, export, consolidation pointers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omni.memory import admin
from omni.memory.consolidator import ConsolidatorConfig, concat_summary
from omni.memory.session import Memory, MemoryConfig
from omni.memory.store import MemoryStore, SchemaVersionError
from omni.memory.testing import HashingEmbedder
from omni.memory.user_index import UserIndex

T0 = 1_800_000_000.0  # a fixed epoch start, so rendered times do not depend on the clock


def _fill(memory: Memory, user: str, session: str, seconds: int, seed: int) -> None:
    """A small stream: a video frame per second (4 tokens x 32 dims), a scene every 8 s, a turn every 5 s."""
    rng = np.random.default_rng(seed)
    mem = memory.open_session(user, session, started_at=T0)
    scene = rng.standard_normal(32)
    for t in range(seconds):
        if t % 8 == 0:
            scene = rng.standard_normal(32)
        mem.add_frame("video", float(t), scene + 0.1 * rng.standard_normal((4, 32)))
        if t % 5 == 4:
            mem.add_utterance("user", f"note number {t} about the {['red', 'blue', 'green'][t % 3]} box", t - 1.0, t)
            mem.turn_boundary(t + 0.1)
    mem.add_utterance("user", "my locker code is 4719", seconds + 0.0, seconds + 1.0)
    mem.close(seconds + 2.0)


def _arrays(index: UserIndex) -> list[np.ndarray]:
    out = []
    for items in (index.events, index.summaries, index.notes):
        out += [items.ids.view, items.t_start.view, items.t_end.view, items.parent.view]
        out += [items.text.view] if items.text is not None else []
        out += [x for lane in items.lanes.values() for x in (lane.keys.view, lane.times.view, lane.pos.view)]
    return out


def test_restart_restores_everything_and_recall_is_identical(store_location: str) -> None:
    embed = HashingEmbedder()
    cfg = MemoryConfig(consolidator=ConsolidatorConfig(every_events=3, fan_in=2))
    first = Memory(MemoryStore.open(store_location), embed, cfg, summarize=concat_summary)
    _fill(first, "ann", "s1", 60, seed=0)
    first.flush()
    live = first.user_index("ann")
    assert len(live.events) >= 8 and len(live.summaries) >= 3 and len(live.notes) == 1
    q = embed(["what is my locker code"])[0]
    query_lane = {"video": np.random.default_rng(0).standard_normal(32)}
    before = first.open_session("ann", "s2", started_at=T0 + 100).recall(q, "", 400, now=T0 + 200, lanes=query_lane)
    first.close()
    first.store.close()

    second = Memory(MemoryStore.open(store_location), embed, cfg)
    restored = second.user_index("ann")
    for a, b in zip(_arrays(live), _arrays(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    after = second.open_session("ann", "s3", started_at=T0 + 100).recall(q, "", 400, now=T0 + 200, lanes=query_lane)
    assert after.text == before.text and "4719" in after.text
    assert [(i.level, i.item_id, i.score) for i in after.items] == [(i.level, i.item_id, i.score) for i in before.items]
    second.close()
    second.store.close()


def test_payloads_round_trip(store: MemoryStore) -> None:
    memory = Memory(store, HashingEmbedder())
    _fill(memory, "bo", "s1", 20, seed=1)
    events = store.load_events("bo")
    p = store.load_payload("bo", events[0].id, "video")
    assert p.tokens.dtype == np.float16 and p.tokens.shape[1:] == (4, 32)
    assert p.times[0] == T0 and np.all(np.diff(p.times) == 2.0)  # a still scene: a frame every keep_every_s
    with pytest.raises(KeyError, match="no lane 'audio'"):
        store.load_payload("bo", events[0].id, "audio")
    with pytest.raises(KeyError):
        store.load_payload("someone-else", events[0].id, "video")  # scoped by user
    memory.close()


def test_schema_version_mismatch_is_a_clear_error(store: MemoryStore, store_location: str) -> None:
    with store._tx() as cur:
        store._exec(cur, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="schema version 99; this omni reads version 1"):
        MemoryStore.open(store_location)


def test_forget_removes_every_row_and_shard_of_one_user(store: MemoryStore, store_location: str) -> None:
    memory = Memory(store, HashingEmbedder(), summarize=concat_summary,
                    config=MemoryConfig(consolidator=ConsolidatorConfig(every_events=2)))
    _fill(memory, "ann", "s1", 30, seed=2)
    _fill(memory, "bob", "s2", 30, seed=3)
    memory.flush()
    assert [u["user"] for u in admin.list_users(store)] == ["ann", "bob"]
    removed = memory.forget("ann")
    assert removed > 10
    assert [u["user"] for u in admin.list_users(store)] == ["bob"]
    assert store.load_events("ann") == [] and store.load_notes("ann") == [] and store.load_summaries("ann") == []
    assert store.sessions("ann") == []
    tables = ("events", "event_lanes", "payloads", "summaries", "summary_lanes", "notes", "sessions")
    counts = {t: store._query(f"SELECT count(*) FROM {t}")[0][0] for t in tables}
    bob_events = len(store.load_events("bob"))
    bob_lanes = sum(len(e.lanes) for e in store.load_events("bob"))  # the last event is speech only
    assert counts["events"] == bob_events and counts["event_lanes"] == bob_lanes
    if store.kind == "sqlite":
        shard_root = Path(store_location) / "shards"
        assert len(list(shard_root.iterdir())) == 1  # only bob's folder is left
        assert counts["payloads"] == 0
    else:
        assert counts["payloads"] == bob_lanes
    assert len(store.load_events("bob")) > 0
    memory.close()


def test_consolidation_writes_summaries_that_point_at_their_children(store: MemoryStore) -> None:
    embed = HashingEmbedder()
    memory = Memory(store, embed, MemoryConfig(consolidator=ConsolidatorConfig(every_events=3, fan_in=2)),
                    summarize=concat_summary)
    _fill(memory, "cy", "s1", 80, seed=4)
    memory.flush()
    events = store.load_events("cy")
    summaries = store.load_summaries("cy")
    level1 = [s for s in summaries if s.level == 1]
    cfg_keys = memory.config.consolidator.keys_per_summary
    assert all(e.summary_id > 0 for e in events)  # the session closed: every event is covered
    assert sorted(c for s in level1 for c in s.children) == [e.id for e in events]
    for s in level1:
        kids = [e for e in events if e.id in s.children]
        assert s.t_start == kids[0].t_start and s.t_end == kids[-1].t_end
        assert all(e.summary_id == s.id for e in kids)
        child_keys = sum(len(e.lanes["video"].keys) for e in kids if e.lanes)
        assert s.lanes["video"].keys.shape == (min(cfg_keys, child_keys), 32)
    upper = [s for s in summaries if s.level == 2]
    assert upper and all(store_child.parent_id > 0 for store_child in level1)
    assert sorted(c for s in upper for c in s.children) == [s.id for s in level1 if s.parent_id]
    memory.close()


def test_admin_list_search_show_export(store: MemoryStore, tmp_path: Path) -> None:
    embed = HashingEmbedder()
    memory = Memory(store, embed)
    _fill(memory, "dee", "s1", 20, seed=5)
    items = admin.list_items(store, "dee")
    assert [r["item"].split(":")[0] for r in items].count("L3") == 1
    assert items == sorted(items, key=lambda r: (r["t_start"], r["item"]))
    hits = admin.search(store, "dee", embed, "locker code", k=3)
    assert "4719" in hits[0]["text"] and hits[0]["score"] >= hits[-1]["score"]
    shown = admin.show(store, "dee", items[0]["item"])
    assert shown["item"] == items[0]["item"]
    with pytest.raises(ValueError, match="expected L1"):
        admin.show(store, "dee", "event 3")
    with pytest.raises(KeyError, match="no item L1:99999"):
        admin.show(store, "dee", "L1:99999")
    path = admin.export(store, "dee", tmp_path / "out")
    doc = json.loads(path.read_text())
    assert doc["user"] == "dee" and len(doc["items"]) == len(items)
    feats = sorted((tmp_path / "out" / "features").iterdir())
    assert len(feats) == sum(len(e.lanes) for e in store.load_events("dee"))
    assert np.load(feats[0])["tokens"].shape[1:] == (4, 32)
    memory.close()


def test_two_server_processes_share_one_store(store_location: str) -> None:
    """Two Memory instances on one store (as two server processes behind a sticky balancer): what one commits,
    the other's next session of that user sees."""
    embed = HashingEmbedder()
    a = Memory(MemoryStore.open(store_location), embed)
    b = Memory(MemoryStore.open(store_location), embed)
    assert b.open_session("ann", "s0", started_at=T0).recall(embed(["locker code"])[0], "", 200).items == []
    _fill(a, "ann", "s1", 20, seed=6)  # commits through a's writer
    r = b.open_session("ann", "s2", started_at=T0 + 100).recall(embed(["my locker code"])[0], "", 200)
    assert "4719" in r.text
    for m in (a, b):
        m.close()
        m.store.close()
