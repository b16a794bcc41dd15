"""The omni engine's batching set-up: cache pools for `max_sessions` sessions and their rows per session.

The first `max_sessions` open sessions keep their Thinker and Talker caches (and Qwen3-Omni's code predictor's) in
rows of pools allocated at start-up, and their replies' decode steps (and speech chunks: Qwen2.5-Omni's token2wav,
Qwen3-Omni's Code2Wav, through the shared streamers here) run batched on the device (omni/streaming/batching.py);
later sessions run alone with caches of their own. On CUDA each pool's decode step is captured as CUDA graphs,
one per batch size, before any session joins (omni/model/lm/batch.py; OMNI_CUDA_GRAPHS=0: eager).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from omni.model.code2wav import StreamingCode2Wav
from omni.model.conversation import ConversationSession
from omni.model.lm.batch import BatchedDecoder, capture_pools, capture_report
from omni.model.lm.cuda_graph import GraphCapture
from omni.model.lm.decoder import DecoderLM
from omni.model.lm.kv_cache import CacheConfig
from omni.model.loaders.talker_weights import SpeechModels
from omni.model.qwen3.speech import Qwen3SpeechModels
from omni.model.qwen3.voice_session import Qwen3VoiceSession
from omni.model.speech_session import SessionRows, SpeakingSession
from omni.model.token2wav.solver import SolverConfig
from omni.model.token2wav.streaming import StreamingSchedule, StreamingToken2Wav
from omni.streaming.batching import SessionPools, StepBatcher
from omni.streaming.engines.omni_models import Speech
from omni.streaming.engines.omni_sessions import OmniSession

log = logging.getLogger(__name__)


def make_pools(
    lm: DecoderLM, speech: Speech | None, max_sessions: int, cache: CacheConfig, talker_cache: CacheConfig | None
) -> tuple[SessionPools, StepBatcher, list[GraphCapture]]:
    """The Thinker's (and the Talker's, and Qwen3-Omni's code predictor's) cache pools for `max_sessions` > 0
    batched sessions, their batcher, and the CUDA graphs captured for them (logged)."""
    thinker = BatchedDecoder(lm, max_sessions, cache)  # either family (Qwen3: MoE layers too)
    named = {"thinker": thinker}
    if speech is not None:  # either family's Talker decoder (Qwen3: MoE)
        assert talker_cache is not None
        named["talker"] = BatchedDecoder(speech.talker.decoder, max_sessions, talker_cache, embeds=True)
    if isinstance(speech, Qwen3SpeechModels):  # and Qwen3's code predictor (a frame's positions per row)
        t = speech.talker
        named["predictor"] = BatchedDecoder(t.predictor, max_sessions, t.predictor_cache(), embeds=True)
    # Before any session joins: each pool's step per batch size (CUDA, OMNI_CUDA_GRAPHS not 0)
    captures = capture_pools(named)
    report = capture_report(named, captures)
    if report is not None:
        log.info("%s", report)
    return SessionPools(list(named.values())), StepBatcher(thinker), captures


def shared_streamers(
    speech: Speech | None, schedule: StreamingSchedule, solver: SolverConfig, compile_token2wav: bool
) -> tuple[StreamingToken2Wav | None, StreamingCode2Wav | None]:
    """The speech decoder the pooled sessions share, so that their chunks batch: Qwen2.5-Omni's token2wav or
    Qwen3-Omni's Code2Wav (None for the other, and both for a text-only engine)."""
    if isinstance(speech, SpeechModels):
        return StreamingToken2Wav(speech.token2wav, schedule, solver, compile_token2wav), None
    if isinstance(speech, Qwen3SpeechModels):
        return None, StreamingCode2Wav(speech.code2wav)
    return None, None


def open_rows(
    pools: SessionPools | None, token2wav: StreamingToken2Wav | None, code2wav: StreamingCode2Wav | None
) -> SessionRows:
    """Cache rows in the pools for a new session (none when there are no pools or they are full)."""
    sids = pools.open() if pools is not None else None
    if pools is None or sids is None:
        return SessionRows()
    rows = SessionRows(pools.pools[0], sids[0])
    if len(pools.pools) > 1:
        rows = replace(rows, talker=pools.pools[1], talker_sid=sids[1], token2wav=token2wav, code2wav=code2wav)
    if len(pools.pools) > 2:
        rows = replace(rows, predictor=pools.pools[2], predictor_sid=sids[2])
    return rows


def rows_of(s: OmniSession) -> SessionRows:
    """The pool rows a session holds (none for one that runs alone)."""
    if isinstance(s, SpeakingSession):
        return SessionRows(s.pool, s.sid, s.talker_pool, s.talker_sid)
    if isinstance(s, Qwen3VoiceSession):
        st = s.speech.state
        return SessionRows(s.pool, s.sid, st.pool, st.sid, st.predictor_pool, st.predictor_sid)
    if isinstance(s, ConversationSession):  # a Thinker row only
        return SessionRows(s.pool, s.sid)
    return SessionRows()


def release_rows(pools: SessionPools | None, rows: SessionRows) -> None:
    """Free a session's pool rows (nothing when it has none)."""
    if pools is not None and rows.thinker_sid is not None:
        pools.leave([rows.thinker_sid, rows.talker_sid, rows.predictor_sid][: len(pools.pools)])
