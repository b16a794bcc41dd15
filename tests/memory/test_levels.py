"""L0 window policy, L1 segmentation and salient key selection."""

from __future__ import annotations

import numpy as np
import pytest

from omni.memory.keys import merge_lane_keys, select_salient_keys, unit_rows
from omni.memory.segmenter import EventSegmenter, SegmenterConfig
from omni.memory.types import Utterance
from omni.memory.window import WindowConfig, WindowItem, WorkingWindow


def _scene(rng: np.random.Generator, d: int = 64) -> np.ndarray:
    return unit_rows(rng.standard_normal((1, d)))[0]


def test_salient_keys_keep_a_small_needle_that_the_mean_key_loses() -> None:
    rng = np.random.default_rng(1)
    d = 64
    background = unit_rows(_scene(rng, d) + 0.3 * rng.standard_normal((20 * 16, d)))  # 20 frames x 16 patches
    needle = _scene(rng, d)
    tokens = background.copy()
    tokens[5 * 16 : 5 * 16 + 2] = needle  # 2 patches of frame 5
    times = np.repeat(np.arange(20.0), 16)
    lane = select_salient_keys(tokens, times, n_keys=8)
    assert lane.keys.shape == (8, d)
    assert float((lane.keys @ needle).max()) > 0.99  # the needle patch is a key
    assert float(lane.mean_key @ needle) < 0.3  # one mean key dilutes it
    best = int(np.argmax(lane.keys @ needle))
    assert lane.key_times[best] == 5.0


def test_salient_keys_are_diverse() -> None:
    rng = np.random.default_rng(2)
    d = 32
    cluster, scene = _scene(rng, d), _scene(rng, d)
    # 12 near-copies of one outlier among 100 tokens of a scene: by saliency alone all 8 keys would be copies of
    # the outlier; with NMS one is, and the others spread over the scene.
    copies = unit_rows(cluster + 0.01 * rng.standard_normal((12, d)))
    tokens = np.concatenate([copies, unit_rows(scene + 0.05 * rng.standard_normal((100, d)))])
    saliency = 1 - tokens @ unit_rows(tokens.mean(axis=0, keepdims=True))[0]
    assert set(np.argsort(-saliency)[:8]) <= set(range(12))
    lane = select_salient_keys(tokens, np.arange(112.0), n_keys=8, nms_cos=0.7)
    assert int((lane.keys @ cluster > 0.9).sum()) == 1
    assert int((lane.keys @ scene > 0.9).sum()) == 7
    assert len({tuple(k) for k in lane.keys.round(6)}) == 8  # no token chosen twice


def test_salient_keys_with_fewer_tokens_than_keys_and_bad_input() -> None:
    lane = select_salient_keys(np.eye(3, 8), np.arange(3.0), n_keys=8)
    assert lane.keys.shape == (3, 8)
    with pytest.raises(ValueError, match=r"\[T>0, D\]"):
        select_salient_keys(np.zeros((0, 8)), np.zeros(0))
    with pytest.raises(ValueError, match="times must have shape"):
        select_salient_keys(np.eye(3), np.arange(2.0))


def test_merge_lane_keys_draws_from_all_children() -> None:
    rng = np.random.default_rng(3)
    kids = [select_salient_keys(rng.standard_normal((40, 16)), np.arange(40.0) + 100 * i, 8) for i in range(4)]
    merged = merge_lane_keys(kids, n_keys=16)
    assert merged.keys.shape == (16, 16)
    assert len({int(t // 100) for t in merged.key_times}) == 4  # every child contributes


def test_segmenter_cuts_at_turn_boundaries_scene_changes_and_max_length() -> None:
    rng = np.random.default_rng(4)
    # dedupe_cos above 1: every frame stays in the payload (these frames are exact repeats)
    seg = EventSegmenter("u", "s", SegmenterConfig(min_s=3.0, min_turn_s=4.0, max_s=10.0, dedupe_cos=1.01))
    a, b = _scene(rng), _scene(rng)
    closed = []
    for t in range(6):  # 0..5 s of scene a
        closed += seg.add_frame("video", float(t), np.stack([a] * 4))
    assert closed == []
    closed += seg.add_frame("video", 6.0, np.stack([b] * 4))  # scene change after >= 3 s: cut before this frame
    assert [(c.event.t_start, c.event.t_end) for c in closed] == [(0.0, 5.0)]
    closed.clear()
    closed += seg.add_utterance(Utterance("user", "hello there", 6.5, 7.5))
    assert seg.turn_boundary(7.6) == []  # only 1.6 s long: under min_turn_s
    for t in range(7, 17):  # the same scene b until 16 s: cut at max_s = 10 s after 6 s
        closed += seg.add_frame("video", float(t), np.stack([b] * 4))
    assert [(c.event.t_start, c.event.t_end) for c in closed] == [(6.0, 15.0)]
    ev = closed[0]
    assert [u.text for u in ev.event.utterances] == ["hello there"]
    assert ev.payloads["video"].tokens.shape == (10, 4, 64)  # frames 6..15
    assert ev.payloads["video"].tokens.dtype == np.float16
    assert seg.turn_boundary(19.5) == []  # open since 16 s: 3.5 s is enough for a scene cut, not a turn cut
    closed = seg.turn_boundary(20.0)  # 4 s >= min_turn_s
    assert [(c.event.t_start, c.event.t_end) for c in closed] == [(16.0, 16.0)]
    assert seg.close() == []


def test_segmenter_scene_change_before_min_length_does_not_cut() -> None:
    rng = np.random.default_rng(5)
    seg = EventSegmenter("u", "s", SegmenterConfig(min_s=3.0, max_s=30.0))
    scenes = [_scene(rng) for _ in range(3)]
    closed = []
    for t, sc in enumerate(scenes):  # a new scene each second
        closed += seg.add_frame("video", float(t), sc[None, :])
    assert closed == []
    closed = seg.add_frame("video", 3.0, _scene(rng)[None, :])  # 3 s after the start: min_s reached
    assert len(closed) == 1 and closed[0].payloads["video"].times.tolist() == [0.0, 1.0, 2.0]


def test_segmenter_rejects_bad_frames() -> None:
    seg = EventSegmenter("u", "s")
    with pytest.raises(ValueError, match="must be"):
        seg.add_frame("video", 0.0, np.zeros((2, 3, 4)))
    seg.add_frame("audio", 0.0, np.ones(8))
    with pytest.raises(ValueError, match="changed its dimension"):
        seg.add_frame("audio", 1.0, np.ones(9))


def test_window_evicts_audio_video_first_then_oldest_text_and_keeps_sinks() -> None:
    w = WorkingWindow(WindowConfig(sink_tokens=10, recall_tokens=20, text_tokens=30, av_tokens=40, question_tokens=5))
    assert w.admit(WindowItem("sink", 10, 0.0)) == []
    with pytest.raises(ValueError, match="sinks would hold"):
        w.admit(WindowItem("sink", 1, 0.0))
    assert w.admit(WindowItem("text", 20, 1.0, "my code is 4719", "user")) == []
    assert w.admit(WindowItem("video", 25, 2.0, handle=1)) == []
    assert w.admit(WindowItem("audio", 10, 2.5, handle=2)) == []
    out = w.admit(WindowItem("video", 25, 3.0, handle=3))
    assert [(i.kind, i.handle) for i in out] == [("video", 1)]
    out = w.admit(WindowItem("text", 15, 4.0, "hi", "assistant"))
    assert [(i.kind, i.text) for i in out] == [("text", "my code is 4719")]
    out = w.admit(WindowItem("text", 10, 5.0, "a", "user"))
    assert out == []  # 15 + 10 = 25 <= 30
    with pytest.raises(ValueError, match="cannot fit"):
        w.admit(WindowItem("video", 41, 6.0))


def test_window_layout_positions_are_contiguous_and_inside_the_trained_range() -> None:
    cfg = WindowConfig(sink_tokens=256, recall_tokens=1024, text_tokens=2048, av_tokens=1024, question_tokens=256,
                       max_positions=4608)
    lay = WorkingWindow(cfg).layout()
    assert lay.sinks == (0, 256)
    assert lay.recall == (256, 1280)
    assert lay.text == (1280, 3328)
    assert lay.av == (3328, 4352)
    assert lay.question == (4352, 4608)
    with pytest.raises(ValueError, match="more than the model's trained range of 4607"):
        WindowConfig(sink_tokens=256, recall_tokens=1024, text_tokens=2048, av_tokens=1024, question_tokens=256,
                     max_positions=4607)


def test_near_duplicate_frames_leave_the_payload_but_one_stays_every_2_s() -> None:
    rng = np.random.default_rng(6)
    seg = EventSegmenter("u", "s", SegmenterConfig(max_s=100.0))
    still = np.stack([_scene(rng) for _ in range(16)])  # 16 patches: one changed is no scene change
    needle = _scene(rng)
    for i in range(20):  # 2 frames/s of a still picture, a needle on one patch at 3.5 s
        frame = still + 0.01 * rng.standard_normal(still.shape)
        if i == 7:
            frame[2] = needle
        seg.add_frame("video", i * 0.5, frame)
    ev = seg.close()[0]
    kept = ev.payloads["video"].times.tolist()
    assert kept == [0.0, 2.0, 3.5, 4.0, 6.0, 8.0]  # every 2 s, the changed frame, and the frame after it
    assert (ev.event.t_start, ev.event.t_end) == (0.0, 9.5)
    assert float((ev.event.lanes["video"].keys @ needle).max()) > 0.99


def test_window_held_by_cache_index_leaves_oldest_first_as_the_cache_slides() -> None:
    w = WorkingWindow(WindowConfig(held_max=5))
    user = WindowItem("text", 6, 1.0, "my code is 4719", "user", start=10)
    reply = WindowItem("text", 4, 2.0, "noted", "assistant", start=10)  # same start, another role: both held
    audio = WindowItem("audio", 50, 0.5, start=20)
    w.track(audio)
    w.track(user)
    w.track(reply)
    assert [it.start for it in w.held] == [10, 10, 20]  # cache order, whatever the order tracked
    assert w.slide(10) == []  # nothing starts below index 10
    heard = WindowItem("text", 2, 2.0, "no", "assistant", start=10)
    assert w.track(heard) == [] and reply not in w.held and heard in w.held  # re-given as heard: replaced
    assert w.revise(heard, "n", 1) and w.held[1].text == "n"
    assert not w.revise(reply, "x", 1)
    revised = w.held[1]
    assert w.slide(11) == [user, revised]  # both start below 11: they leave whole, though their tails are in view
    assert w.held == [audio] and w.left == 2
    assert w.slide(11) == []
    for k in range(6):  # past held_max the oldest leaves early (written below, never lost)
        left = w.track(WindowItem("text", 1, 3.0, f"t{k}", "user", start=30 + k))
        assert left == ([audio] if k == 4 else [WindowItem("text", 1, 3.0, "t0", "user", start=30)] if k == 5 else [])
    assert [it.text for it in w.drain_held()] == ["t1", "t2", "t3", "t4", "t5"] and w.held == []
    with pytest.raises(ValueError, match="cache index"):
        w.track(WindowItem("text", 1, 0.0, "x"))
