"""The read path: rank L3 notes, L2 summaries and L1 events against the question, pack the best into a token budget.

Scores are cosines: the question's text embedding against text keys (notes, summaries, event transcripts), and for
engines that have them, a query vector per feature lane against each event's salient keys (max over the keys,
memory.md 5.2: `score = max(max_r q.k_r, q_txt.k_txt)`). Text items may also hold keys in further text spaces
(omni.memory.user_index `text_spaces`: the omni engine's Thinker input space), which a query vector of that space
scores the same way as the text key (floor `min_space_score`): a spoken question, which has no text embedding, then
reaches typed facts and summaries by its Thinker-space vector. A text item's score is its best over the spaces.
Candidates under a floor are left out rather than used to fill the slot: an unrelated item costs tokens and invites
the model to cite it (false evidence). So are text-scored candidates more than `text_margin` below the best text
score: a user's similar notes all pass the floor, and a small model cites a runner-up instead of the item the
question is about. The chosen items come back in time order with their timestamps; for feature
matches the frames within `evidence_window_s` of the best key (in the requested evidence lanes, crossing into the
neighbouring event when the window does) come along.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from omni.memory.index import ItemIndex
from omni.memory.keys import unit_rows
from omni.memory.store import MemoryStore
from omni.memory.types import Event, Level, Recall, RecallItem
from omni.memory.user_index import UserIndex, space_lane

TokenCounter = Callable[[str], int]


def approx_tokens(text: str) -> int:
    """About 4 characters per token for English BPE vocabularies (SmolLM2, Qwen2): a ceiling, never 0."""
    return len(text) // 4 + 1


@dataclass(frozen=True)
class RecallConfig:
    min_text_score: float = 0.35  # MiniLM-L6 cosine: related sentences 0.4-0.8, unrelated ones mostly under 0.3
    min_feature_score: float = 0.5  # the reference's hit criterion for a visual needle (memory.md section 6)
    # Text items in a further text space (mean Thinker token embeddings against the question's mean input
    # embedding): not yet measured on a trained checkpoint; the feature lanes' floor until it is.
    min_space_score: float = 0.5
    evidence_window_s: float = 2.0  # frames kept around the best key: the +-2 s of memory.md 5.2 step 3
    max_candidates: int = 32
    descend_summaries: int = 4  # level-1 summaries whose demoted children are scored from disk
    carry_decay: float = 0.8  # previous turn's items stay candidates at this share of their score (follow-ups)
    # Text-scored candidates more than this below the best text score are left out: a user's similar notes ("my
    # seat number is 27", "my badge number is 3309") all pass the floor for "what is my badge number?", and
    # SmolLM2-135M then cites a runner-up; the item the question is about scores clearly higher (MiniLM, tuning
    # facts of benchmarks/fact_recall.py: best minus second 0.16 or more). None: no margin.
    text_margin: float | None = 0.1
    header: str = "Recalled memory (oldest first, times in UTC):"


@dataclass(frozen=True)
class RecallQuery:
    """The question: its text embedding (unit, or None), its text, feature-lane queries and evidence lanes."""

    text_key: np.ndarray | None
    text: str = ""
    lanes: dict[str, np.ndarray] = field(default_factory=dict)
    evidence_lanes: tuple[str, ...] = ()  # lanes whose frames come back around the best key; () = the query lanes
    text_spaces: dict[str, np.ndarray] = field(default_factory=dict)  # query vector per text key space


@dataclass
class _Candidate:
    level: Level
    item_id: int
    score: float
    best_time: float
    by_lane: bool
    evidence: tuple[str, ...] | None = None  # lanes to return frames of; None: the query's evidence lanes


def run_recall(
    user: UserIndex,
    store: MemoryStore,
    query: RecallQuery,
    budget_tokens: int,
    now: float,
    config: RecallConfig,
    count_tokens: TokenCounter = approx_tokens,
    previous: Sequence[RecallItem] = (),
) -> Recall:
    """Rank, pack and render; see the module docstring. `now` (epoch s) only sets the "ago" of each line."""
    t0 = time.perf_counter()
    if budget_tokens <= 0:
        raise ValueError(f"budget_tokens must be positive, got {budget_tokens}")
    q_text = None if query.text_key is None else unit_rows(query.text_key[None, :])[0]
    q_lanes = {name: unit_rows(v[None, :])[0] for name, v in query.lanes.items()}
    q_text_all = _TextQuery(q_text, {space_lane(n): unit_rows(v[None, :])[0] for n, v in query.text_spaces.items()})
    with user.lock:
        cands = _rank(user, store, q_text_all, q_lanes, config)
        cands = _carry(user, cands, previous, config)
        items = _pack(user, store, query, cands, budget_tokens, now, config, count_tokens)
    items.sort(key=lambda it: (it.t_start, it.level, it.item_id))
    text = "\n".join([config.header, *(f"[{_clock(it.t_start)}, {_ago(now - it.t_end)}] {it.text}" for it in items)])
    used = sum(it.tokens for it in items) + (count_tokens(config.header) if items else 0)
    return Recall(items=items, tokens=used, budget_tokens=budget_tokens, text=text if items else "",
                  elapsed_ms=(time.perf_counter() - t0) * 1e3)


@dataclass(frozen=True)
class _TextQuery:
    """The question's text side: its text embedding (unit, or None) and a unit vector per text-space lane."""

    key: np.ndarray | None
    spaces: dict[str, np.ndarray]


def _text_scores(index: ItemIndex, q: _TextQuery, config: RecallConfig) -> np.ndarray:
    """Each item's best text score over the text key and the text spaces, each above its floor (else -inf)."""
    best = np.full(len(index), -np.inf, np.float32)
    if q.key is not None:
        s = index.text_scores(q.key)
        best = np.where(s >= config.min_text_score, s, best)
    for lane, v in q.spaces.items():
        s = index.lane_scores(lane, v)[0]
        best = np.where((s >= config.min_space_score) & (s > best), s, best)
    return best


def _rank(
    user: UserIndex, store: MemoryStore, q_text: _TextQuery, q_lanes: dict[str, np.ndarray],
    config: RecallConfig,
) -> list[_Candidate]:
    out: list[_Candidate] = []
    k = config.max_candidates
    text_levels: list[tuple[Level, ItemIndex]] = [("L3", user.notes), ("L2", user.summaries)]
    for level, index in text_levels:
        scores = _text_scores(index, q_text, config)
        for pos in _top(scores, -np.inf, k):
            out.append(_Candidate(level, int(index.ids.view[pos]), float(scores[pos]), 0.0, False))
    ev = user.events
    best = _text_scores(ev, q_text, config)
    best_time = ev.t_start.view.copy()
    by_lane = np.zeros(len(ev), dtype=bool)
    for lane, q in q_lanes.items():
        s, t = ev.lane_scores(lane, q)
        better = (s >= config.min_feature_score) & (s > best)
        best, best_time, by_lane = np.where(better, s, best), np.where(better, t, best_time), by_lane | better
    for pos in _top(best, -np.inf, k):
        out.append(_Candidate("L1", int(ev.ids.view[pos]), float(best[pos]), float(best_time[pos]), bool(by_lane[pos])))
    out.extend(_descend(user, store, q_text, q_lanes, config))
    out.sort(key=lambda c: (-c.score, c.item_id))
    return _within_margin(out[: config.max_candidates], config.text_margin)


def _within_margin(cands: list[_Candidate], margin: float | None) -> list[_Candidate]:
    """`cands` less the text-scored ones more than `margin` below the best text score (feature-lane hits stay)."""
    text = [c.score for c in cands if not c.by_lane]
    if margin is None or not text:
        return cands
    edge = max(text) - margin
    return [c for c in cands if c.by_lane or c.score >= edge]


def _top(scores: np.ndarray, floor: float, k: int) -> np.ndarray:
    """Positions of the `k` best scores above `floor` (finite), in no particular order: objects only for those."""
    ok = np.flatnonzero(np.isfinite(scores) & (scores >= floor))
    if len(ok) > k:
        ok = ok[np.argpartition(-scores[ok], k - 1)[:k]]
    return ok


def _descend(
    user: UserIndex, store: MemoryStore, q: _TextQuery, q_lanes: dict[str, np.ndarray],
    config: RecallConfig,
) -> list[_Candidate]:
    """Score from disk the demoted events under the best-matching level-1 summaries (their text-space keys are not
    on disk: those events are scored by text key and feature lanes)."""
    if user.demoted_upto == 0 or len(user.summaries) == 0:
        return []
    q_text = q.key
    s = user.summaries.text_scores(q_text) if q_text is not None else np.full(len(user.summaries), -np.inf)
    for lane, v in [*q.spaces.items(), *q_lanes.items()]:
        s = np.maximum(s, user.summaries.lane_scores(lane, v)[0])
    ids: list[int] = []
    for pos in np.argsort(-s)[: config.descend_summaries]:
        summary = user.summary_texts[int(user.summaries.ids.view[pos])]
        if np.isfinite(s[pos]) and summary.level == 1:
            ids += [c for c in summary.children if c <= user.demoted_upto]
    out = []
    for e in store.load_events(user.user_id, ids=sorted(ids)):
        score, t, lane_hit = _score_event(e, q_text, q_lanes, config)
        if np.isfinite(score):
            out.append(_Candidate("L1", e.id, score, t, lane_hit))
    return out


def _score_event(
    e: Event, q_text: np.ndarray | None, q_lanes: dict[str, np.ndarray], config: RecallConfig
) -> tuple[float, float, bool]:
    best, t, lane_hit = -np.inf, e.t_start, False
    if q_text is not None and e.text_key is not None and float(e.text_key @ q_text) >= config.min_text_score:
        best = float(e.text_key @ q_text)
    for lane, q in q_lanes.items():
        if lane in e.lanes:
            sims = e.lanes[lane].keys @ q
            i = int(np.argmax(sims))
            if sims[i] >= config.min_feature_score and sims[i] > best:
                best, t, lane_hit = float(sims[i]), float(e.lanes[lane].key_times[i]), True
    return best, t, lane_hit


def _carry(
    user: UserIndex, cands: list[_Candidate], previous: Sequence[RecallItem], config: RecallConfig
) -> list[_Candidate]:
    """A follow-up ("and after that?") resolves through the previous turn's items and the event after each."""
    have = {(c.level, c.item_id): c for c in cands}
    for it in previous:
        lanes = tuple(sorted(it.features))
        extra = [_Candidate(it.level, it.item_id, it.score * config.carry_decay, it.best_time, bool(lanes), lanes)]
        pos = user.events.position(it.item_id) if it.level == "L1" else -1
        if 0 <= pos < len(user.events) - 1:
            # The event after it, with its first frames as evidence.
            t_next = float(user.events.t_start.view[pos + 1]) + config.evidence_window_s
            extra.append(_Candidate("L1", int(user.events.ids.view[pos + 1]), it.score * config.carry_decay**2,
                                    t_next, bool(lanes), lanes))
        for cand in extra:
            old = have.get((cand.level, cand.item_id))
            if old is None:
                have[(cand.level, cand.item_id)] = cand
            elif old.score < cand.score:
                old.score = cand.score
    out = sorted(have.values(), key=lambda c: (-c.score, c.item_id))
    return out[: config.max_candidates]


def _pack(
    user: UserIndex, store: MemoryStore, query: RecallQuery, cands: list[_Candidate], budget: int, now: float,
    config: RecallConfig, count_tokens: TokenCounter,
) -> list[RecallItem]:
    wanted = sorted(c.item_id for c in cands if c.level == "L1")
    events = {e.id: e for e in store.load_events(user.user_id, ids=wanted, with_keys=False)}
    used = count_tokens(config.header)
    chosen: list[RecallItem] = []
    seen_text: list[str] = []
    for c in cands:
        made = _make_item(user, store, query, c, events, now, config, count_tokens)
        if made is None:
            continue
        item, words = made
        if words and any(words in s or s in words for s in seen_text):
            continue  # the same words are already in the slot (a turn note and the event holding that turn)
        if used + item.tokens <= budget:
            chosen.append(item)
            if words:
                seen_text.append(words)
            used += item.tokens
    return chosen


def _make_item(
    user: UserIndex, store: MemoryStore, query: RecallQuery, c: _Candidate, events: dict[int, Event], now: float,
    config: RecallConfig, count_tokens: TokenCounter,
) -> tuple[RecallItem, str] | None:
    """The item and the words it quotes (for de-duplication; "" for an event without speech)."""
    feats: dict[str, np.ndarray] = {}
    ftimes: dict[str, np.ndarray] = {}
    if c.level == "L3":
        note = user.note_items[c.item_id]
        # A turn note already names its speaker ("user: ...", "assistant: ..."; SessionMemory._roll_up).
        body, t0, t1 = note.text if note.kind == "turn" else f"fact: {note.text}", note.t_first, note.t_last
        words = note.text
    elif c.level == "L2":
        s = user.summary_texts[c.item_id]
        body, t0, t1 = f"summary: {s.text}", s.t_start, s.t_end
        words = s.text
    else:
        e = events.get(c.item_id)
        if e is None:
            return None  # forgotten between ranking and packing
        t0, t1 = e.t_start, e.t_end
        words = " / ".join(f"{u.role}: {u.text}" for u in e.utterances)
        body = words or "(no speech)"
        if c.by_lane:
            for lane in c.evidence if c.evidence is not None else query.evidence_lanes or tuple(query.lanes):
                frames, times = _evidence(user, store, e, lane, c.best_time, config.evidence_window_s)
                if len(frames):
                    feats[lane], ftimes[lane] = frames, times
            if feats:
                body += " [" + ", ".join(f"{len(v)} {k} frames" for k, v in sorted(feats.items())) + "]"
    # One line per item (Recall.text is read back line by line): a reply or a fact may hold line breaks.
    body = " ".join(body.split())
    line = f"[{_clock(t0)}, {_ago(now - t1)}] {body}"  # the cost of the rendered line, timestamp included
    tokens = count_tokens(line) + sum(int(v.shape[0] * v.shape[1]) for v in feats.values())
    item = RecallItem(level=c.level, item_id=c.item_id, t_start=t0, t_end=t1, text=body, score=c.score,
                      tokens=tokens, features=feats, feature_times=ftimes, best_time=c.best_time)
    return item, words


def _evidence(
    user: UserIndex, store: MemoryStore, e: Event, lane: str, t: float, window: float
) -> tuple[np.ndarray, np.ndarray]:
    """Frames of `lane` within `window` s of `t`, from `e` and the neighbouring events the window reaches."""
    ids = [e.id]
    pos = user.events.position(e.id)
    if pos >= 0:
        if t - window < e.t_start and pos > 0:
            ids.insert(0, int(user.events.ids.view[pos - 1]))
        if t + window > e.t_end and pos < len(user.events) - 1:
            ids.append(int(user.events.ids.view[pos + 1]))
    frames, times = [], []
    for eid in ids:
        try:
            p = store.load_payload(user.user_id, eid, lane)
        except KeyError:
            continue
        mask = np.abs(p.times - t) <= window
        frames.append(p.tokens[mask])
        times.append(p.times[mask])
    if not frames:
        return np.zeros((0, 0, 0), np.float16), np.zeros(0)
    return np.concatenate(frames), np.concatenate(times)


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    return f"{s // 3600} h {s % 3600 // 60} min ago"
