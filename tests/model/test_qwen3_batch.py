"""Qwen3-Omni voice sessions batched on the device (omni/model/lm/batch.py `PoolStep`, `run_steps`): the Thinker and
Talker caches of several `Qwen3VoiceSession`s are rows of `BatchedDecoder` pools (over the MoE Thinker, the MoE Talker
decoder and the Talker's code predictor), their reply generators' Thinker, Talker (codebook-0) and code predictor
decode steps run as one batched forward per pool, their due Code2Wav chunks as one call of a shared
`StreamingCode2Wav` (omni/model/code2wav/streaming.py), and each session says what it says alone: the same reply tokens
and the same Talker frames (every codebook; greedy, float32 on the CPU), and the same PCM to float rounding (the
batched Code2Wav call rounds differently: measured bound in PCM_TOL), with prompts of different lengths, replies
of different lengths (one ends early), a session joining late, and one cut mid-reply (barge-in) whose row a new
session then takes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from omni.model.code2wav import StreamingCode2Wav
from omni.model.conversation import ReplyRecord
from omni.model.lm.batch import BatchedDecoder, run_steps
from omni.model.lm.sampling import SamplingConfig
from omni.model.qwen3.loader import LoadedQwen3, load_qwen3
from omni.model.qwen3.session import Qwen3ThinkerSession
from omni.model.qwen3.speech import Qwen3SpeechModels, Qwen3SpeechSettings, load_qwen3_speech
from omni.model.qwen3.talker import GREEDY
from omni.model.qwen3.voice_session import Qwen3VoiceSession
from omni.model.speech_session import SessionRows
from omni.model.token2wav.streaming import PCMChunk
from tests.model.step_reply import StepReply

FRAMES = 12  # Talker frames per reply at most
NO_STOP: frozenset[int] = frozenset()  # every reply runs its max_new_tokens (random weights rarely stop)
# (prompt, reply tokens): prompts of different lengths, one reply shorter than the others (it ends early)
ASKS = [("hi there", 8), ("what is the weather like in the mountains today", 8), ("tell me a story", 4), ("ok", 8)]
Qwen3 = tuple[LoadedQwen3, Qwen3SpeechModels]
# float32 Code2Wav batched vs alone. This tiny random Code2Wav saturates (97% of samples clamped, std 0.99), which
# amplifies rounding: float32 alone is 2.2e-3 off the float64 decode, batched 1.5e-3 off it, and batched vs alone
# measured 2.5e-3 here; in float64 batched vs alone is 3.3e-12 (the tight check: tests/model/test_code2wav_batch.py).
# (A mask or state leak there moves samples by 0.85 to 1.33.)
PCM_TOL = 1e-2


@pytest.fixture(scope="module")
def qwen3(qwen3_tiny_dir: Path) -> Qwen3:
    q = load_qwen3(qwen3_tiny_dir, dtype=torch.float32)
    return q, load_qwen3_speech(qwen3_tiny_dir, torch.float32, index=q.index)


def _sampling(n: int) -> SamplingConfig:
    return SamplingConfig(temperature=0.0, max_new_tokens=n)


Pools = tuple[BatchedDecoder, BatchedDecoder, BatchedDecoder, StreamingCode2Wav]


def _pools(qwen3: Qwen3, n: int) -> Pools:
    """The Thinker's, the Talker's and the code predictor's decoder pools, and the shared Code2Wav streamer."""
    t = qwen3[1].talker
    return (BatchedDecoder(qwen3[0].model.lm, n), BatchedDecoder(t.decoder, n, embeds=True),
            BatchedDecoder(t.predictor, n, t.predictor_cache(), embeds=True), StreamingCode2Wav(qwen3[1].code2wav))


def _session(qwen3: Qwen3, text: str, pools: Pools | None = None) -> Qwen3VoiceSession:
    q, speech = qwen3
    settings = Qwen3SpeechSettings(sampling=dataclasses.replace(GREEDY, max_new_tokens=FRAMES),
                                   predictor_sampling=GREEDY, seed=0)
    rows = None if pools is None else SessionRows(*(x for p in pools[:3] for x in (p, p.open())), code2wav=pools[3])
    with torch.inference_mode():
        s = Qwen3VoiceSession(q.model, q.prompt, q.tokenizer, speech, settings, "You are a voice assistant.", rows=rows)
        s.start_user_turn()
        s.add_text(text)
        s.end_user_turn()
    return s


def _frames(s: Qwen3VoiceSession) -> list[list[int]]:
    return [f.reshape(-1).tolist() for f in s.speech.frames]


def _alone(qwen3: Qwen3, text: str, n: int) -> tuple[list[int], list[list[int]], list[PCMChunk]]:
    s = _session(qwen3, text)
    with torch.inference_mode():
        events = list(s.respond(_sampling(n), NO_STOP))
    rec = events[-1]
    assert isinstance(rec, ReplyRecord)
    return rec.token_ids, _frames(s), [e for e in events if isinstance(e, PCMChunk)]


def _pcm_diff(got: list[PCMChunk], want: list[PCMChunk]) -> float:
    """Max |got - want| over the chunks `got` has (a prefix of `want`'s: a cut reply has fewer), same starts and
    sizes."""
    assert [(c.start, c.samples.numel()) for c in got] == [(c.start, c.samples.numel()) for c in want[: len(got)]]
    return max((float((a.samples - b.samples).abs().max()) for a, b in zip(got, want, strict=False)), default=0.0)


class _Reply(StepReply):
    """One session's `respond_steps`, advanced to its next `PoolStep` (events collected on the way); `tokens`: the
    reply tokens whose decode step was asked for (a Thinker step feeds a token, a Talker one an embedding)."""

    def __init__(self, session: Qwen3VoiceSession, n: int) -> None:
        self.session = session
        super().__init__(session.respond_steps(_sampling(n), NO_STOP), lambda x: isinstance(x.item, int))


def test_voice_sessions_say_the_same_alone_and_batched_as_others_join_leave_and_end(qwen3: Qwen3) -> None:
    want = {text: _alone(qwen3, text, n) for text, n in ASKS}
    assert len({tuple(tokens) for tokens, _, _ in want.values()}) == len(ASKS)  # a row mix-up would show
    assert all(frames and pcm for _, frames, pcm in want.values())
    pools = _pools(qwen3, 3)
    n_of = dict(ASKS)
    replies = {t: _Reply(_session(qwen3, t, pools), n_of[t]) for t, _ in ASKS[:2]}
    batched: list[int] = [0] * len(pools)  # per pool: steps run in a batch of two or more ...
    widths: list[set[int]] = [set() for _ in pools]  # ... and those batches' widths
    cut: list[int] = []
    cut_session: Qwen3VoiceSession | None = None
    cut_reply: _Reply | None = None
    for it in range(200):
        if it == 2:  # a third session (short reply) joins while the first two are mid-reply
            replies[ASKS[2][0]] = _Reply(_session(qwen3, ASKS[2][0], pools), ASKS[2][1])
        if it == 5:  # the second one is cut mid-reply (barge-in) and leaves: its row is freed ...
            r = cut_reply = replies.pop(ASKS[1][0])
            cut, cut_session = list(r.tokens), r.session
            assert not r.done
            with torch.inference_mode():
                r.gen.close()
            st = cut_session.speech.state
            for pool, sid in zip(pools[:3], (cut_session.sid, st.sid, st.predictor_sid), strict=True):
                assert sid is not None
                pool.leave(sid)
            # ... and a fourth session takes it
            replies[ASKS[3][0]] = _Reply(_session(qwen3, ASKS[3][0], pools), ASKS[3][1])
        steps = [(r, r.step) for r in replies.values() if r.step is not None]
        if not steps:
            break
        for k, pool in enumerate(pools):
            n = sum(st.pool is pool for _, st in steps)
            if n > 1:
                batched[k] += n
                widths[k].add(n)
        for (r, _), res in zip(steps, run_steps([st for _, st in steps]), strict=True):
            assert not isinstance(res, BaseException), res
            r.send = res
            r.step = r.next_step()
    assert all(r.done for r in replies.values())
    pcm_err = 0.0
    for text, r in replies.items():
        assert r.record is not None
        assert (r.record.token_ids, _frames(r.session)) == want[text][:2], text
        assert r.record.codes == [f[0] for f in want[text][1]]
        assert sum(c.samples.numel() for c in r.pcm) == r.record.samples
        pcm_err = max(pcm_err, _pcm_diff(r.pcm, want[text][2]))
    assert 0 < len(cut) <= n_of[ASKS[1][0]] and cut == want[ASKS[1][0]][0][: len(cut)]
    assert cut_session is not None and not cut_session.speech.replying  # the cut reply stopped its Talker
    assert cut_reply is not None and cut_reply.pcm  # the cut one's audio so far: a prefix of its audio alone
    pcm_err = max(pcm_err, _pcm_diff(cut_reply.pcm, want[ASKS[1][0]][2]))
    print(f"batched steps per pool {batched}, widths {widths}, max |PCM batched - alone| {pcm_err:.3g}")
    assert pcm_err < PCM_TOL
    # every pool really batched (sessions that joined at different times step different pools at one iteration: the
    # code predictor's 15 steps a frame batch most; the Thinker's all three wide in the next test), Code2Wav chunks too
    assert all(batched) and widths[2] >= {2, 3} and widths[3] >= {2, 3}, (batched, widths)


def test_a_cut_pooled_session_replies_next_as_one_alone(qwen3: Qwen3) -> None:
    """Barge-in on a pooled session while another keeps replying: rolled back to its reply's start and given a new
    turn, its next reply is what a session with a cache of its own says after the same cut."""
    pools = _pools(qwen3, 2)
    pooled, own = _session(qwen3, ASKS[0][0], pools), _session(qwen3, ASKS[0][0])
    marks = [pooled.mark(), own.mark()]
    mine, other, alone = (_Reply(pooled, 8), _Reply(_session(qwen3, ASKS[1][0], pools), 8), _Reply(own, 8))
    while len(mine.tokens) < 4:  # three Thinker steps and the Talker's so far, batched with the other session's
        for r, res in zip((mine, other), run_steps([mine.step, other.step]), strict=True):  # type: ignore[list-item]
            assert not isinstance(res, BaseException), res
            r.send = res
            r.step = r.next_step()
    while len(alone.tokens) < 4:  # the own one as far, alone
        alone.send = run_steps([alone.step])[0]  # type: ignore[list-item]
        alone.step = alone.next_step()
    assert mine.tokens == alone.tokens  # (the 4th token's step asked for, not run)
    with torch.inference_mode():
        mine.gen.close()
        alone.gen.close()
    while other.step is not None:  # the other session's reply runs on to its end, alone now
        other.send = run_steps([other.step])[0]
        other.step = other.next_step()
    for s, mark in zip((pooled, own), marks, strict=True):
        assert not s.speech.replying
        with torch.inference_mode():
            s.rollback(mark)
            s.start_user_turn()
            s.add_text("and then what happened?")
            s.end_user_turn()
    assert pooled.state.cache.length == own.state.cache.length
    got = []
    for s in (pooled, own):
        with torch.inference_mode():
            rec = list(s.respond(_sampling(6), NO_STOP))[-1]
        assert isinstance(rec, ReplyRecord)
        got.append((rec.token_ids, _frames(s)))
    assert got[0] == got[1] and got[0][1]


def test_a_thinker_only_session_batches_its_decode_steps(qwen3: Qwen3) -> None:
    """A Qwen3ThinkerSession (no speech part, e.g. a Thinking checkpoint) in a pool row: batched text replies equal
    the ones alone."""
    q, _ = qwen3

    def session(text: str, pool: BatchedDecoder | None) -> Qwen3ThinkerSession:
        with torch.inference_mode():
            s = Qwen3ThinkerSession(q.model, q.prompt, "Be brief.", tokenizer=q.tokenizer, pool=pool,
                                    sid=None if pool is None else pool.open())
            s.start_user_turn()
            s.add_text(text)
            s.end_user_turn()
        return s

    want = []
    for text, n in ASKS[:3]:
        with torch.inference_mode():
            rec = list(session(text, None).respond(_sampling(n), NO_STOP))[-1]
        assert isinstance(rec, ReplyRecord)
        want.append(rec.token_ids)
    pool = BatchedDecoder(q.model.lm, 3)
    replies = [_Reply(session(text, pool), n) for text, n in ASKS[:3]]  # type: ignore[arg-type]
    widths = []
    while any(r.step is not None for r in replies):
        live = [r for r in replies if r.step is not None]
        widths.append(len(live))
        for r, res in zip(live, run_steps([r.step for r in live if r.step is not None]), strict=True):
            r.send = res
            r.step = r.next_step()
    assert [r.record.token_ids for r in replies if r.record is not None] == want
    assert widths.count(3) >= 3 and widths.count(2) >= 3, widths  # batched 3 wide, then 2 once the short one ended
