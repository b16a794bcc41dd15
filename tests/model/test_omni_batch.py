"""Omni sessions batched on the device (omni/model/lm/batch.py `PoolStep`, `run_steps`): SpeakingSessions whose
Thinker and Talker caches are rows of two `BatchedDecoder` pools, their reply generators' decode steps run as
one batched forward per pool, say what each says alone (text tokens and speech codes; greedy, float32 on the
CPU), with sessions joining and leaving mid-reply, a new one taking the row a leaver freed. Their token2wav
chunks, through one shared `StreamingToken2Wav`, batch too and give the PCM each gets alone (to float rounding:
tests/model/test_token2wav_batch.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from omni.model.conversation import ReplyRecord
from omni.model.lm.batch import BatchedDecoder, run_steps
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders.omni import LoadedThinker, load_thinker
from omni.model.loaders.talker_weights import SpeechModels, load_speech
from omni.model.speech_session import SessionRows, SpeakingSession, SpeechSettings
from omni.model.thinker_session import ThinkerSession
from omni.model.token2wav.solver import SolverConfig
from omni.model.token2wav.streaming import PCMChunk, StreamingSchedule, StreamingToken2Wav
from omni.model.voices import Voice, VoiceBank
from tests.model.omni_tiny import IDS, save_tiny_omni
from tests.model.step_reply import StepReply

REPLY_TOKENS, CODES = 10, 24
SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=REPLY_TOKENS)
NO_STOP: frozenset[int] = frozenset()  # every reply runs its REPLY_TOKENS (random weights rarely stop)
PROMPTS = ["hi there", "what is the weather like", "tell me a story", "ok"]
Omni = tuple[LoadedThinker, SpeechModels]
SCHEDULE, SOLVER = StreamingSchedule(first_chunk_blocks=1, chunk_blocks=1), SolverConfig(num_steps=2)
# Float rounding of a batched vocoder call (tests/model/test_token2wav_batch.py): this model's random vocoder
# amplifies it (its output sits at the +-1 clamp much of the time); measured max |diff| 2.1e-4, SNR >= 99.5 dB.
PCM_SNR_DB = 80.0


def _same_pcm(got: list[PCMChunk], want: list[PCMChunk], label: str) -> None:
    assert [c.start for c in got] == [c.start for c in want] and len(want) >= 2, label
    for g, w in zip(got, want, strict=True):
        assert g.samples.shape == w.samples.shape, label
        err = (g.samples - w.samples).double()
        snr = 10 * math.log10(float((w.samples.double() ** 2).sum() / (err**2).sum().clamp_min(1e-300)))
        print(f"{label}: chunk at {g.start}: max |diff| {float(err.abs().max()):.2g}, SNR {snr:.1f} dB")
        assert snr > PCM_SNR_DB, label


@pytest.fixture(scope="module")
def omni(tmp_path_factory: pytest.TempPathFactory) -> Omni:
    _, d = save_tiny_omni(tmp_path_factory.mktemp("omni-batch") / "ckpt")
    g = torch.Generator().manual_seed(0)
    voice = Voice("Chelsie", IDS["spk_bos"], torch.randn(1, 16, generator=g), torch.randn(1, 60, 80, generator=g) - 4)
    VoiceBank({"Chelsie": voice}).save(Path(d) / "spk_dict.pt")
    return load_thinker(d), load_speech(d)


def _session(omni: Omni, text: str, rows: SessionRows | None = None) -> SpeakingSession:
    loaded, speech = omni
    settings = SpeechSettings(talker_sampling=speech.talker.cfg.sampling(temperature=0.0, max_new_tokens=CODES),
                              seed=0, schedule=SCHEDULE, solver=SOLVER)
    with torch.inference_mode():
        s = SpeakingSession(loaded.model, loaded.prompt, loaded.tokenizer, speech, settings, rows=rows)
        s.start_user_turn()
        s.add_text(text)
        s.end_user_turn()
    return s


def _alone(omni: Omni, text: str) -> tuple[list[int], list[int]]:
    return _alone_pcm(omni, text)[0]


def _alone_pcm(omni: Omni, text: str) -> tuple[tuple[list[int], list[int]], list[PCMChunk]]:
    s = _session(omni, text)
    with torch.inference_mode():
        events = list(s.respond(SAMPLING, NO_STOP))
    rec = events[-1]
    assert isinstance(rec, ReplyRecord)
    return (rec.token_ids, rec.codes), [e for e in events if isinstance(e, PCMChunk)]


class _Reply(StepReply):
    """One session's `respond_steps`, advanced to its next `PoolStep` (events collected on the way)."""

    def __init__(self, session: SpeakingSession) -> None:
        self.session = session
        super().__init__(session.respond_steps(SAMPLING, NO_STOP), lambda x: x.pool is session.pool)


def _pools(omni: Omni, n: int) -> tuple[BatchedDecoder, BatchedDecoder]:
    loaded, speech = omni
    return BatchedDecoder(loaded.model.lm, n), BatchedDecoder(speech.talker.decoder, n, embeds=True)


def _rows(thinker: BatchedDecoder, talker: BatchedDecoder, t2w: StreamingToken2Wav | None = None) -> SessionRows:
    return SessionRows(thinker, thinker.open(), talker, talker.open(), token2wav=t2w)


def test_a_session_says_the_same_alone_and_batched_as_others_join_and_leave(omni: Omni) -> None:
    alone = {text: _alone_pcm(omni, text) for text in PROMPTS}
    want = {text: tokens for text, (tokens, _) in alone.items()}
    assert len({tuple(codes) for _, codes in want.values()}) > 1  # replies differ: a row mix-up would show
    thinker, talker = _pools(omni, 3)
    t2w = StreamingToken2Wav(omni[1].token2wav, SCHEDULE, SOLVER)
    replies: dict[str, _Reply] = {t: _Reply(_session(omni, t, _rows(thinker, talker, t2w))) for t in PROMPTS[:2]}
    batched = {"thinker": 0, "talker": 0, "token2wav": 0}  # steps that ran in a batch of two or more, per pool
    cut: list[int] = []
    for it in range(400):
        if it == 3:  # a third session joins while the first two are mid-reply
            replies[PROMPTS[2]] = _Reply(_session(omni, PROMPTS[2], _rows(thinker, talker, t2w)))
        if it == 6:  # the second one leaves mid-reply (barge-in): its rows are freed ...
            r = replies.pop(PROMPTS[1])
            cut = list(r.tokens)
            with torch.inference_mode():
                r.gen.close()
            thinker.leave(r.session.sid)  # type: ignore[arg-type]
            talker.leave(r.session.talker_sid)  # type: ignore[arg-type]
            # ... and a fourth session takes them
            replies[PROMPTS[3]] = _Reply(_session(omni, PROMPTS[3], _rows(thinker, talker, t2w)))
        steps = [(r, r.step) for r in replies.values() if r.step is not None]
        if not steps:
            break
        for pool, name in ((thinker, "thinker"), (talker, "talker"), (t2w, "token2wav")):
            n = sum(st.pool is pool for _, st in steps)
            batched[name] += n if n > 1 else 0
        for (r, _), res in zip(steps, run_steps([st for _, st in steps]), strict=True):
            assert not isinstance(res, BaseException), res
            r.send = res  # answered at once, as the runtime's batcher does: the reply runs on to its next step
            r.step = r.next_step()
    assert all(r.done for r in replies.values())
    for text, r in replies.items():
        assert r.record is not None
        assert (r.record.token_ids, r.record.codes) == want[text], text
        _same_pcm(r.pcm, alone[text][1], text)
    assert 0 < len(cut) < REPLY_TOKENS and cut == want[PROMPTS[1]][0][: len(cut)]
    assert batched["thinker"] >= 2 * REPLY_TOKENS and batched["talker"] >= 2 * 8, batched


def test_speech_chunks_of_sessions_in_step_batch_and_match_alone(omni: Omni) -> None:
    """Sessions that start together stay in step (every reply has REPLY_TOKENS tokens and CODES codes), so
    their token2wav chunks fall due together: each chunk runs in a batch of three and equals the lone one."""
    texts = PROMPTS[:3]
    alone = {text: _alone_pcm(omni, text) for text in texts}
    thinker, talker = _pools(omni, 3)
    t2w = StreamingToken2Wav(omni[1].token2wav, SCHEDULE, SOLVER)
    replies = {t: _Reply(_session(omni, t, _rows(thinker, talker, t2w))) for t in texts}
    t2w_batches = []
    while steps := [(r, r.step) for r in replies.values() if r.step is not None]:
        n = sum(st.pool is t2w for _, st in steps)
        if n:
            t2w_batches.append(n)
        for (r, _), res in zip(steps, run_steps([st for _, st in steps]), strict=True):
            assert not isinstance(res, BaseException), res
            r.send, r.step = res, None
            r.step = r.next_step()
    assert all(len(alone[t][0][1]) == CODES for t in texts)  # no early stop: the sessions stayed in step
    for text, r in replies.items():
        assert r.record is not None and (r.record.token_ids, r.record.codes) == alone[text][0]
        _same_pcm(r.pcm, alone[text][1], text)
    assert t2w_batches and all(n == len(texts) for n in t2w_batches), t2w_batches


def test_the_cut_session_stays_consistent_in_its_row(omni: Omni) -> None:
    """A reply closed mid-way in a pooled row leaves the session's caches as a session of its own would."""
    thinker, talker = _pools(omni, 2)
    pooled = _session(omni, PROMPTS[0], _rows(thinker, talker))
    own = _session(omni, PROMPTS[0])
    for s in (pooled, own):
        with torch.inference_mode():
            it = s.respond(SAMPLING, NO_STOP)
            for _ in range(4):
                next(it)
            it.close()
    assert pooled.state.cache.length == own.state.cache.length
    assert pooled.talker_state.decoder.cache.length == own.talker_state.decoder.cache.length
    assert pooled.logits is not None and own.logits is not None
    torch.testing.assert_close(pooled.logits, own.logits)


def test_a_text_only_session_in_a_pool_needs_its_pools_cache_config(omni: Omni) -> None:
    loaded, _ = omni
    thinker, _talker = _pools(omni, 1)
    other = thinker.cache_cfg.__class__(sinks=2, window=64, chunk=16)
    with pytest.raises(ValueError, match="cache config"):
        ThinkerSession(loaded.model, loaded.prompt, cache=other, pool=thinker, sid=thinker.open())
