"""The synthetic audio-visual stream of the Needle-in-a-Stream suite (memory.md sections 6 and 7), seeded.

1 frame/s, 16 tokens per frame (a 4x4 pooled grid), D=256. Scenes of 5-60 s drawn from a recurring pool; a frame's
tokens are the scene's 16 patch vectors plus noise. Needles: small objects on 2 of the 16 patches for 2-6 s; the
question's vector has cosine about 0.74 with the object (the toy's idealised text-to-image alignment). Distractor
objects appear 240 times an hour, half of them near-duplicates at cosine 0.5 of a needle (Q4). The audio lane is
one ambient token per second per scene plus a few distinct sound events (Q3: "what was on screen when the glass
broke?"). The dialogue lane carries filler turns and spoken facts said once (Q2), with turn boundaries.
Hard mode (the reference's "1 h hard" row): objects on 1 patch, question cosine 0.61, 900 distractors an hour.
Everything derives from (seed, t): the same stream, frame for frame, on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

D = 256
TOKENS = 16
QUERY_COS = 0.74
COUSIN_COS = 0.5

_NAMES = ["Alice", "Bruno", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena", "Mateo",
          "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zoe"]
_ATTRS = ["locker code", "gate number", "parking spot", "room number", "bike lock code", "table number",
          "flight number", "seat number", "badge number", "mailbox number"]
_SUBJECTS = ["the weather", "this song", "the meeting", "the coffee", "the queue", "the light in here", "the train",
             "my sister", "the new phone", "the garden", "the match last night", "this street", "the printer"]
_PREDICATES = ["looks better than yesterday", "reminds me of last summer", "was a bit too long", "keeps changing",
               "is louder than I expected", "seems fine for now", "could use some attention", "made me laugh",
               "is taking forever", "feels different today", "is worth a second look", "was hard to follow"]
_REPLIES = ["I see, tell me more", "that sounds nice", "good to know", "I understand", "interesting, go on",
            "noted", "that makes sense", "alright"]


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _noise(rng: np.random.Generator, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
    """Gaussian noise of norm about `sigma` per D-dim vector (cosine ~ 1/sqrt(1 + sigma^2) to the clean vector)."""
    return (sigma / np.sqrt(D) * rng.standard_normal(shape)).astype(np.float32)


def near(rng: np.random.Generator, v: np.ndarray, cos: float) -> np.ndarray:
    """A unit vector at cosine `cos` from unit `v`."""
    o = rng.standard_normal(v.shape[0]).astype(np.float32)
    o = unit(o - (o @ v) * v)
    return unit(cos * v + np.sqrt(1 - cos * cos) * o)


@dataclass
class Needle:
    t: int  # first second
    duration: int
    obj: np.ndarray
    query: np.ndarray
    patches: tuple[int, ...]


@dataclass
class Fact:
    t: int
    text: str
    question: str
    answer: str


@dataclass
class Sound:
    t: int
    tag: np.ndarray
    query: np.ndarray


@dataclass
class Stream:
    seconds: int
    seed: int
    scene_of: np.ndarray  # [seconds] scene index per second
    scenes: np.ndarray  # [S, 16, D] patch vectors
    ambient: np.ndarray  # [S, D]
    needles: list[Needle]
    cousins: list[Needle]  # near-duplicates (cosine 0.5) of needles[i] for i < len(cousins)
    distractors: list[Needle]
    sounds: list[Sound]
    facts: list[Fact]
    turns: list[tuple[int, str, str]] = field(default_factory=list)  # (second, role, text)
    painted: dict[int, list[Needle]] = field(default_factory=dict)

    def video(self, t: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, t, 1))
        tokens = self.scenes[self.scene_of[t]] + _noise(rng, 0.15, (TOKENS, D))
        for n in self.painted.get(t, []):
            for p in n.patches:
                tokens[p] = n.obj + _noise(rng, 0.05, (D,))
        return tokens

    def audio(self, t: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, t, 2))
        for s in self.sounds:
            if s.t == t:
                return s.tag[None, :]
        return (self.ambient[self.scene_of[t]] + _noise(rng, 0.15, (D,)))[None, :]


def make_stream(minutes: float, seed: int, hard: bool = False) -> Stream:
    rng = np.random.default_rng(seed)
    n_patches, query_cos, distract_per_h = (1, 0.61, 900) if hard else (2, QUERY_COS, 240)
    seconds = int(minutes * 60)
    hours = seconds / 3600
    n_scenes = 40
    scenes = unit(unit(rng.standard_normal((n_scenes, 1, D)))
                  + 0.6 * rng.standard_normal((n_scenes, TOKENS, D)) / np.sqrt(D))
    ambient = unit(rng.standard_normal((n_scenes, D)))
    scene_of = np.zeros(seconds, dtype=np.int64)
    t = 0
    while t < seconds:
        length = int(rng.integers(5, 61))
        scene_of[t : t + length] = rng.integers(0, n_scenes)
        t += length
    slots = _free_slots(rng, seconds, max(1, round(60 * hours)) + max(1, round(30 * hours)) + max(2, round(40 * hours)))
    n_needles, n_sounds = max(1, round(60 * hours)), max(1, round(30 * hours))
    def needle(t: int, obj: np.ndarray) -> Needle:
        return _needle(rng, t, obj, n_patches, query_cos)

    needles = [needle(s, unit(rng.standard_normal(D))) for s in slots[:n_needles]]
    sounds = []
    for s in slots[n_needles : n_needles + n_sounds]:
        tag = unit(rng.standard_normal(D))
        sounds.append(Sound(t=s, tag=tag, query=near(rng, tag, query_cos)))
    facts = _facts(rng, slots[n_needles + n_sounds :])
    n_distract = round(distract_per_h * hours)
    cousins = [needle(int(rng.integers(10, seconds - 10)), near(rng, needles[i].obj, COUSIN_COS))
               for i in range(min(len(needles), n_distract // 2))]
    distractors = [needle(int(rng.integers(10, seconds - 10)), unit(rng.standard_normal(D)))
                   for _ in range(n_distract - len(cousins))]
    stream = Stream(seconds, seed, scene_of, scenes, ambient, needles, cousins, distractors, sounds, facts)
    for n in needles + cousins + distractors:
        for dt in range(n.duration):
            if n.t + dt < seconds:
                stream.painted.setdefault(n.t + dt, []).append(n)
    stream.turns = _turns(rng, seconds, facts)
    return stream


def _free_slots(rng: np.random.Generator, seconds: int, n: int) -> list[int]:
    """`n` distinct start times spread over 5-95% of the stream (needle depth uniform), at least 12 s apart."""
    lo, hi = int(0.05 * seconds), int(0.95 * seconds)
    grid = np.arange(lo, hi, 12)
    if len(grid) < n:
        raise ValueError(f"a {seconds} s stream has room for {len(grid)} needles, {n} asked for")
    return [int(x) for x in rng.permutation(grid)[:n]]


def _needle(rng: np.random.Generator, t: int, obj: np.ndarray, n_patches: int, query_cos: float) -> Needle:
    patches = tuple(int(p) for p in rng.choice(TOKENS, size=n_patches, replace=False))
    return Needle(t=t, duration=int(rng.integers(2, 7)), obj=obj, query=near(rng, obj, query_cos), patches=patches)


def _facts(rng: np.random.Generator, times: list[int]) -> list[Fact]:
    out = []
    for i, t in enumerate(times):
        name, attr = _NAMES[i % len(_NAMES)], _ATTRS[(i // len(_NAMES) + i) % len(_ATTRS)]
        value = str(int(rng.integers(1000, 10000)))
        out.append(Fact(t=t, text=f"the {attr} of {name} is {value}", question=f"what is the {attr} of {name}?",
                        answer=value))
    return out


def _turns(rng: np.random.Generator, seconds: int, facts: list[Fact]) -> list[tuple[int, str, str]]:
    """A user remark and an assistant reply every 8-20 s (about 3,600 words an hour), and the facts, each said
    once by the user: dense enough that a 2,048-token text window holds only the last ~25 minutes."""
    turns = [(f.t, "user", f.text) for f in facts]
    fact_times = np.array([f.t for f in facts])
    t = int(rng.integers(3, 10))
    while t < seconds - 5:
        if not len(fact_times) or np.abs(fact_times - t).min() > 6:
            subject = _SUBJECTS[int(rng.integers(len(_SUBJECTS)))]
            remark = f"{subject} {_PREDICATES[int(rng.integers(len(_PREDICATES)))]}"
            turns.append((t, "user", remark))
            turns.append((t + 3, "assistant", _REPLIES[int(rng.integers(len(_REPLIES)))]))
        t += int(rng.integers(8, 21))
    return sorted(turns)
