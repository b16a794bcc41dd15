"""The omni engine: the Qwen2.5-Omni Thinker-Talker (`omni/model/`) behind the real-time engine interface.

    user audio (16 kHz) --log-mel + audio encoder, per completed 2-s block, prefilled while the user speaks-->
    camera frames (sampled at 2 fps, interleaved with the audio in 2-s chunks as the Thinker was trained) -->
      Thinker KV cache --end of turn: <|im_end|> <|im_start|>assistant--> text tokens --> TextDelta
        --Talker (one text slot per codec step)--> codec codes --streaming token2wav--> AudioChunk (24 kHz)

`OmniEngine` holds the weights (Thinker, Talker, token2wav, voices), shared by all sessions. An
`OmniEngineSession` owns one `SpeakingSession` (both KV caches, encoder buffers, token2wav window, RNG).

Barge-in (`interrupt(played_text)`): both caches are rolled back to the start of the reply (the mark taken
right after <|im_start|>assistant\\n was prefilled) and the played text is prefilled as the assistant turn,
closed with <|im_end|>\\n. The conversation is then exactly what a fresh session fed the same user turns and
only the played text would hold (tests/streaming/test_omni_engine.py checks this by the next reply). Rolling
back instead of trimming in place because the Thinker's reply tokens are not the played text's tokens
(the cut falls inside a word) and the Talker's prompt track has one slot per Thinker position: re-prefilling
a few dozen tokens is cheap and keeps both tracks equal by construction. The rollback is exact because a reply
is at most `max_new_tokens` (+ 2 turn-end tokens) long and the caches' chunk is made at least that
(`KVCache.truncate`). Where the user has already spoken again after the reply, the audio since cannot be
re-fed (its encoder state is gone): then only the text history is trimmed, with a warning.

The Talker gives no alignment of codes to text, so `AudioChunk.text` is an estimate (omni_reply.py says how).

Either model family (omni/model/loaders/family.py, from config.json): a Qwen3-Omni checkpoint loads through
omni/model/qwen3/loader.py (+ omni/model/qwen3/speech.py for talker.* and code2wav.*) and each conversation is a
`Qwen3VoiceSession` (omni/model/qwen3/voice_session.py; a `Qwen3ThinkerSession` when no speech part is loaded,
e.g. a Thinking checkpoint); the engine's turn, reply and barge-in logic is the same (for Qwen3 the Talker
sees only user turns, so a barge-in rolls back the Thinker alone). Voices are the checkpoint's speakers
by name. Both families' sessions implement `OmniSession` (omni_sessions.py: camera frames during spoken turns and
clips with their soundtrack as a live video-with-audio segment, each family's own interleave; memory through
`take_encoded` and the recalled slot of `end_user_turn`), so the engine does not tell them apart after
`open_session`. (`quant` covers the Qwen3 Talker too.)

Beside this file: omni_models.py loads the weights, omni_pools.py sets up the pools that batch sessions' decode
steps, omni_sessions.py opens each family's conversation in its voice, omni_media.py prefills whole attachments,
omni_reply.py turns a reply into events and omni_memory.py is the memory glue.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from omni.model.code2wav import StreamingCode2Wav
from omni.model.conversation import SlotPiece, ThinkerMark
from omni.model.encoders.vision_preprocess import AnyVisionConfig, resize_and_normalize, video_frame_size
from omni.model.lm.batch import PoolStep, run_alone
from omni.model.lm.config import DecoderConfig
from omni.model.lm.cuda_graph import GraphCapture
from omni.model.lm.decoder import default_cache_config
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders.family import QWEN2_5_OMNI, QWEN3_OMNI_MOE
from omni.model.loaders.talker_weights import SpeechModels
from omni.model.prompt import SPEECH_SYSTEM_PROMPT
from omni.model.qwen3.loader import LoadedQwen3
from omni.model.qwen3.speech import Qwen3SpeechModels
from omni.model.speech_session import SpeechSettings
from omni.model.token2wav import SAMPLE_RATE
from omni.model.token2wav.solver import SolverConfig
from omni.model.token2wav.streaming import StreamingSchedule, StreamingToken2Wav, compile_requested
from omni.streaming.batching import ModelReply, SessionPools, StepBatcher
from omni.streaming.engine import (
    INPUT_SAMPLE_RATE,
    SPOKEN_REPLY,
    Attachment,
    EngineEvent,
    EngineSessionBase,
    History,
    Image,
    ResponseOptions,
    check_rgb_frame,
    close_iterator,
    replace_last_reply,
)
from omni.streaming.engines.omni_media import feed_clip, feed_image, vision_config
from omni.streaming.engines.omni_memory import DEFAULT_BUDGET, OmniMemory
from omni.streaming.engines.omni_models import Loaded, Speech, load_models
from omni.streaming.engines.omni_pools import make_pools, open_rows, release_rows, rows_of, shared_streamers
from omni.streaming.engines.omni_reply import OmniReply, ReplyOutput, reply_events
from omni.streaming.engines.omni_sessions import OmniSession, open_conversation, voice_name
from omni.streaming.memory_lane import MemoryLane

__all__ = ["DEFAULT_SAMPLING", "OmniEngine", "OmniEngineSession"]

log = logging.getLogger(__name__)

# Voice replies are short: 200 tokens is ~150 words, about a minute of speech.
DEFAULT_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=200)
FRAME_SECONDS = 0.5  # the Thinker sees video at 2 fps (two frames per 1-s temporal patch)
_SESSION_NUMBERS = itertools.count()
TURN_END_TOKENS = 8  # "<|im_end|>\n" and slack, on top of a reply, for the rollback bound


class OmniEngine:
    """Weights of a Qwen2.5-Omni checkpoint directory, shared by every session."""

    name = "omni"
    input_sample_rate = INPUT_SAMPLE_RATE
    output_sample_rate = SAMPLE_RATE  # token2wav's 24 kHz

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        voice: str | None = None,
        *,
        speak: bool = True,
        models: tuple[Loaded, Speech | None] | None = None,
        system_prompt: str = SPEECH_SYSTEM_PROMPT,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
        talker_sampling: SamplingConfig | None = None,
        seed: int | None = None,
        window: int = 4096,
        max_codes: int = 4096,
        schedule: StreamingSchedule | None = None,
        solver: SolverConfig | None = None,
        chars_per_second: float = 15.0,
        video_stale_seconds: float = 2.0,
        max_history: int = 64,
        quant: str | None = None,
        memory_budget: int = DEFAULT_BUDGET,
        max_sessions: int = 0,
        compile_token2wav: bool | None = None,
    ) -> None:
        """`model_dir`: a Qwen2.5-Omni checkpoint with its speech half (talker.*, token2wav.*, spk_dict.pt), or a
        Qwen3-Omni checkpoint (talker.*, code2wav.*; the family is read from config.json);
        `models`: already loaded ones instead (shared, e.g. by tests). `speak=False`: replies are text only
        and the speech half is not loaded (no `AudioChunk` events). `voice`: the default voice (None: the
        checkpoint's default). `seed`: Talker sampling and token2wav noise (None: random per reply).
        `schedule`/`solver`: token2wav's chunking and ODE solver (None: the reference's).
        `chars_per_second`: the speaking rate that maps audio to reply text (about 150 words a minute).
        `quant`: "int8" or "int4" quantises the Thinker's and the Talker's decoder projections weight-only at load
        (the GPU kernels). `memory_budget`: tokens of the recalled-memory slot, when the runtime gives the session
        a memory (omni.streaming.engines.omni_memory).
        `max_sessions` > 0: the first that many open sessions keep their Thinker and Talker caches (and Qwen3-Omni's
        code predictor's) in rows of pools allocated now, and their replies' decode steps (and speech chunks:
        Qwen2.5-Omni's token2wav, Qwen3-Omni's Code2Wav) run batched on the device (omni/streaming/batching.py); later
        sessions, and all with 0, run alone with caches of their own. On CUDA each pool's decode step is captured
        as CUDA graphs, one per batch size, here (before any session joins; `graph_captures`, logged;
        OMNI_CUDA_GRAPHS=0: eager).
        `compile_token2wav` (Qwen2.5-Omni): the streaming token2wav's DiT and BigVGAN through `torch.compile`,
        compiled here by a throw-away turn (`token2wav_compile_s`, logged); None: OMNI_TOKEN2WAV_COMPILE (off unless
        1). Off by default: on a CPU it costs minutes at start-up (benchmarks/token2wav_compile.py)."""
        if chars_per_second <= 0:
            raise ValueError(f"chars_per_second must be > 0, got {chars_per_second}")
        thinker, speech = models or load_models(model_dir, device, dtype, speak, quant)
        self.family = QWEN3_OMNI_MOE if isinstance(thinker, LoadedQwen3) else QWEN2_5_OMNI
        if self.family == QWEN3_OMNI_MOE and speak and speech is None:
            log.warning("this Qwen3-Omni model has no speech part loaded (a Thinking or Captioner checkpoint has "
                        "none): replies are text (and transcript) only")
            speak = False
        if not speak:
            speech = None
        elif speech is None:
            raise ValueError("a speaking OmniEngine needs the checkpoint's speech models")
        self.thinker = thinker
        self.speech = speech
        self.default_voice = self.check_voice(voice) if speech is not None else None
        self.system_prompt = system_prompt
        self.sampling = sampling
        self.talker_sampling = talker_sampling
        self.seed = seed
        self.max_codes = max_codes
        self.schedule = schedule or StreamingSchedule()
        self.solver = solver or SolverConfig()
        self.chars_per_second = chars_per_second
        self.video_stale_seconds = video_stale_seconds
        self.max_history = max_history
        self.memory_budget = memory_budget
        self.stop_ids = frozenset(sampling.stop_token_ids or thinker.tokenizer.stop_token_ids)
        need = sampling.max_new_tokens + TURN_END_TOKENS
        self.cache = _reply_cache(thinker.model.lm.cfg, window, need)
        self.talker_cache: CacheConfig | None = None
        if speech is not None:
            decoder = speech.talker.decoder.cfg if isinstance(speech, Qwen3SpeechModels) else speech.talker.cfg.decoder
            self.talker_cache = _reply_cache(decoder, window, need)
        self.compile_token2wav = compile_requested() if compile_token2wav is None else compile_token2wav
        self._make_pools(max_sessions)
        self.token2wav_compile_s = self._compile_token2wav(max_sessions)

    def _compile_token2wav(self, max_sessions: int) -> float:
        """Compile the streaming token2wav now (when asked), not in a user's first reply; seconds it took."""
        if not (self.compile_token2wav and isinstance(self.speech, SpeechModels)):
            return 0.0
        streamer = self.token2wav or StreamingToken2Wav(self.speech.token2wav, self.schedule, self.solver, True)
        seconds = streamer.warm_up(max_batch=2 if max_sessions > 1 else 1)  # (batches of 2 and more: one graph)
        log.info("compiled the streaming token2wav (torch.compile) in %.1f s", seconds)
        return seconds

    def _make_pools(self, max_sessions: int) -> None:
        """The pools that batch `max_sessions` sessions (omni_pools.py), their batcher and shared speech decoder."""
        if max_sessions < 0:
            raise ValueError(f"max_sessions must be >= 0, got {max_sessions}")
        self.pools: SessionPools | None = None
        self.batcher: StepBatcher | None = None
        self.token2wav: StreamingToken2Wav | None = None  # shared by the pooled sessions (their chunks batch)
        self.code2wav: StreamingCode2Wav | None = None  # the same for Qwen3-Omni's Code2Wav
        self.graph_captures: list[GraphCapture] = []  # the pools' CUDA graphs, captured at start-up (on CUDA)
        if max_sessions > 0:
            self.token2wav, self.code2wav = shared_streamers(self.speech, self.schedule, self.solver,
                                                             self.compile_token2wav)
            self.pools, self.batcher, self.graph_captures = make_pools(
                self.thinker.model.lm, self.speech, max_sessions, self.cache, self.talker_cache
            )

    def _release(self, s: OmniSession) -> None:
        """Free a closed session's pool rows."""
        release_rows(self.pools, rows_of(s))

    def check_voice(self, voice: str | None) -> str:
        """The checkpoint's name for `voice` (None: its default); ValueError listing the voices it has."""
        return voice_name(self.speech, voice)

    @property
    def vision_cfg(self) -> AnyVisionConfig:
        """The vision encoder's config (what video_frame_size takes) of either family."""
        return vision_config(self.thinker)

    def open_session(self, *, instructions: str | None = None, voice: str | None = None) -> OmniEngineSession:
        """A new conversation; `voice` names one of the checkpoint's voices (case-insensitive)."""
        system = instructions or self.system_prompt
        if self.speech is None:
            if voice is not None:
                self.check_voice(voice)  # raises: a text-only engine has no voices
            with torch.inference_mode():
                conversation = self._conversation(system, None)
            return self._session(conversation)
        name = self.check_voice(voice) if voice is not None else self.default_voice
        assert name is not None
        return self._session(self._conversation(system, name))

    def _conversation(self, system: str, voice: str | None) -> OmniSession:
        """The family's session (omni_sessions.py) on pool rows when there are free ones."""
        settings = SpeechSettings(
            voice=voice,
            talker_sampling=self.talker_sampling,
            seed=self.seed,
            schedule=self.schedule,
            solver=self.solver,
            max_codes=self.max_codes,
            compile_token2wav=self.compile_token2wav,
        )
        rows = open_rows(self.pools, self.token2wav, self.code2wav)
        try:
            with torch.inference_mode():
                return open_conversation(self.thinker, self.speech, system, settings, self.cache, self.talker_cache,
                                         rows)
        except BaseException:
            release_rows(self.pools, rows)
            raise

    def _session(self, speaking: OmniSession) -> OmniEngineSession:
        session = OmniEngineSession(self, speaking)
        session.default_instructions = self.system_prompt  # what set_instructions(None) brings back
        return session


def _reply_cache(cfg: DecoderConfig, window: int, need: int) -> CacheConfig:
    """A decoder's cache of `window` positions whose chunk holds `need` tokens: a whole reply and its turn end, so
    that the rollback on barge-in is exact (KVCache.truncate)."""
    cache = default_cache_config(cfg, window=window)
    return replace(cache, chunk=max(cache.chunk, need))


@dataclass
class _Turn:
    """The open user turn's input side."""

    segment: str | None = None  # "audio", "av" (video with its audio) or None between segments
    started: bool = False  # <|im_start|>user\n is prefilled
    audio_seconds: float = 0.0
    frames: int = 0  # video frames fed in the open segment
    t0: float = 0.0  # media time of the segment's first audio sample
    size: tuple[int, int] = (0, 0)  # resized frame (height, width) of the open av segment
    frame_slots: list[float] = field(default_factory=list)
    typed: list[str] = field(default_factory=list)  # typed text of the turn (the question's words)
    pos: int = 0  # the Thinker cache index where the turn starts (<|im_start|>user), for L0
    # Where the open segment began (discard_audio rolls back to it): the session's mark, whether the segment
    # opened the user turn, and the last reply's `input_after` then.
    undo: tuple[ThinkerMark, bool, bool] | None = None


class OmniEngineSession(EngineSessionBase):
    """One conversation. Not thread-safe: the runtime calls it from one worker at a time."""

    def __init__(self, engine: OmniEngine, speaking: OmniSession) -> None:
        super().__init__()
        self.history: History = deque(maxlen=engine.max_history)
        self.engine = engine
        self.speaking = speaking  # a speaking session when the engine speaks, else a Thinker session
        self._turn = _Turn()
        self._reply: OmniReply | None = None
        self._frame: tuple[np.ndarray, float] | None = None  # the latest camera frame and its time
        self.memory: OmniMemory | None = None  # set by the runtime (use_memory); its owner closes the lane
        self.label = f"omni-{next(_SESSION_NUMBERS)}"  # names its steps in the batcher's log

    def use_memory(self, lane: MemoryLane) -> None:
        """Read and write memory through `lane`: what the Thinker hears and sees goes in as pooled encoder features,
        typed text and replies (as heard) as text; each turn's recall enters the prompt as a slot of text and
        features before the reply (omni.streaming.engines.omni_memory). The Thinker's KV cache tells the lane before its
        window slides, so what leaves it is written below first (L0)."""
        self.memory = OmniMemory(lane, self.engine.vision_cfg.spatial_merge_size, self.engine.memory_budget)
        self.speaking.state.cache.watch(lane.slid)

    # ---- input side ---------------------------------------------------------------------------------

    def push_audio(self, pcm: np.ndarray, timestamp: float) -> list[EngineEvent]:
        """Encode and prefill every 2-s block that `pcm` completes (float32 mono at 16 kHz)."""
        self._check_open()
        if not isinstance(pcm, np.ndarray) or pcm.dtype != np.float32 or pcm.ndim != 1:
            what = f"{pcm.dtype} {pcm.shape}" if isinstance(pcm, np.ndarray) else type(pcm).__name__
            raise ValueError(f"push_audio expects float32 mono samples [n] at 16000 Hz in [-1, 1], got {what}")
        if not np.isfinite(pcm).all():
            raise ValueError("push_audio got NaN or infinite samples")
        with torch.inference_mode():
            self._begin_segment(timestamp)
            turn, s = self._turn, self.speaking
            x = torch.from_numpy(np.ascontiguousarray(pcm))
            if turn.segment == "av":
                self._fill_frames(turn.t0 + turn.audio_seconds + len(pcm) / self.engine.input_sample_rate)
                s.push_av_audio(x)
                self._remember(turn.t0)  # nothing of a video segment is fed again: into memory now
            else:
                s.push_audio(x)
            turn.audio_seconds += len(pcm) / self.engine.input_sample_rate
        return []

    def push_text(self, text: str) -> list[EngineEvent]:
        """Prefill typed text into the open user turn (after any audio segment, which it closes)."""
        self._check_open()
        with torch.inference_mode():
            self._between_segments()
            self.speaking.add_text(text)
            if self.memory is not None and text.strip():
                ids = self.speaking.prompt.text(text)
                embeds = self.speaking.thinker.lm.embed_tokens(torch.tensor(ids, device=self.speaking.thinker.device))
                self.memory.typed(embeds, self.memory.lane.clock())
        self._turn.typed.append(text)
        self.history.append(("user", text))
        return []

    def push_media(self, media: Attachment) -> list[EngineEvent]:
        """Prefill an image, or a video clip (sampled at the checkpoint's 2 fps; with its soundtrack
        interleaved as TMRoPE lays out a video with audio), into the open user turn."""
        self._check_open()
        with torch.inference_mode():
            self._between_segments()
            if isinstance(media, Image):
                label = feed_image(self.speaking, self.engine.thinker, media)
            else:
                label = feed_clip(self.speaking, self.engine.thinker, media)
            self.history.append(("user", label))
            self._remember(self.memory.lane.clock() if self.memory is not None else 0.0, asked=True)
        return []

    def _between_segments(self) -> None:
        """Close an open audio segment and open the user turn, for a part of the turn that is not streamed."""
        self._end_segment()
        self._note_input()
        if not self._turn.started:
            self._open_turn()

    def _open_turn(self) -> None:
        """<|im_start|>user\n; the turn's first cache index is kept for memory's L0."""
        self._turn.pos = self.speaking.state.cache.length
        self.speaking.start_user_turn()
        self._turn.started = True

    def push_video(self, frame: np.ndarray, timestamp: float) -> None:
        """Keep the latest frame; during a user turn, feed it into the video slots (2 fps) it reaches."""
        self._check_open()
        check_rgb_frame(frame)
        self._frame = (frame, timestamp)
        if self._turn.segment == "av":
            with torch.inference_mode():
                self._fill_frames(timestamp)
            self._remember(self._turn.t0)

    def end_turn(self) -> list[EngineEvent]:
        """Encode the partial last audio block and close the segment; the reply prompt follows in `respond`."""
        self._check_open()
        with torch.inference_mode():
            self._end_segment()
        return []

    def discard_audio(self) -> None:
        """Close the open audio (or video-with-audio) segment and roll both caches back to where it began; its
        encoder outputs go with it, except a video segment's, which memory took as they came (`_remember`).
        Exact while the segment is at most the caches' chunk of tokens (KVCache.truncate), else logged."""
        self._check_open()
        turn, s = self._turn, self.speaking
        if turn.segment is None or turn.undo is None:
            return
        mark, opened, input_after = turn.undo
        with torch.inference_mode():
            if turn.segment == "av":
                if turn.frames == 0:  # (as _end_segment: the segment needs one frame to close)
                    self._fill_frames(turn.t0)
                s.end_av()
            else:
                s.end_audio()
            cache = s.state.cache
            if cache.length - mark.thinker_tokens > cache.cfg.chunk:
                log.warning("discarding %d tokens of audio: past the cache's chunk of %d, the window keeps a gap "
                            "where they overwrote it", cache.length - mark.thinker_tokens, cache.cfg.chunk)
            s.rollback(mark)
        turn.segment, turn.undo, turn.audio_seconds, turn.frames = None, None, 0.0, 0
        if opened:
            turn.started = False
        if self._reply is not None:
            self._reply.input_after = input_after

    def _begin_segment(self, timestamp: float) -> None:
        turn, s = self._turn, self.speaking
        if turn.segment is not None:
            return
        turn.undo = (s.mark(), not turn.started, self._reply is not None and self._reply.input_after)
        self._note_input()
        if not turn.started:
            self._open_turn()
        turn.t0, turn.audio_seconds, turn.frames, turn.frame_slots = timestamp, 0.0, 0, []
        frame = self._frame
        fresh = frame is not None and timestamp - frame[1] <= self.engine.video_stale_seconds
        if frame is not None and fresh:
            enc, pre = self.engine.vision_cfg, self.engine.thinker.vision_preprocess
            turn.size = video_frame_size(frame[0].shape[0], frame[0].shape[1], enc, pre)
            s.begin_av(*turn.size)
            turn.segment = "av"
        else:
            s.begin_audio()
            turn.segment = "audio"

    def _fill_frames(self, until: float) -> None:
        """Feed the latest frame into every 0.5-s video slot of the segment up to media time `until` (a camera
        slower than 2 fps repeats its frame, so video time keeps pace with the audio)."""
        turn = self._turn
        assert self._frame is not None
        pixels: torch.Tensor | None = None
        while turn.t0 + turn.frames * FRAME_SECONDS <= until:
            if pixels is None:
                pixels = resize_and_normalize(self._frame[0], turn.size, self.engine.thinker.vision_preprocess)[0]
            self.speaking.push_av_frame(pixels.to(self.speaking.thinker.lm.dtype))
            turn.frames += 1

    def _end_segment(self) -> None:
        turn, s = self._turn, self.speaking
        if turn.segment == "av":
            if turn.frames == 0:  # audio shorter than nothing: the segment still needs one frame
                self._fill_frames(turn.t0)
            s.end_av()
        elif turn.segment == "audio":
            s.end_audio()
        if turn.segment is not None:
            video = f", {turn.frames} frames" if turn.segment == "av" else ""
            self.history.append(("user", f"[audio {turn.audio_seconds:.1f} s{video}]"))
            self._remember(turn.t0)
        turn.segment, turn.undo = None, None

    def _remember(self, t0: float, asked: bool = False) -> None:
        """Encoder outputs fed since the last call, of the segment that started at `t0`, into memory (taken always:
        the session keeps them until taken). An audio-only segment's are taken at its end, since a louder block
        can still re-floor and re-feed earlier ones until then (ThinkerSession._prefill_segment); a video
        segment's (2 fps: ~1.8 MB of features a second at 7B) as they come, those the session can no longer feed
        again (`take_encoded`: Qwen3's live audio re-floors across its video). `asked`: media the user pushed into
        the turn (an image, a clip), which joins the turn's question as what the user said does."""
        pieces = self.speaking.take_encoded()
        if self.memory is not None:
            self.memory.ingest(pieces, t0, asked)

    def _note_input(self) -> None:
        if self._reply is not None and not self._reply.open:
            self._reply.input_after = True

    # ---- output side --------------------------------------------------------------------------------

    def respond(self, options: ResponseOptions = SPOKEN_REPLY) -> Iterator[EngineEvent]:
        """Close the user turn (prefill <|im_end|>\\n<|im_start|>assistant\\n) and return the reply's events.
        Without user input since the last reply, an empty user turn is answered. `options.speech` False: the
        Talker still runs (its codes stay in the cache) but no audio leaves. `options.instructions` guide this reply
        only: a system turn between the user's and the reply's (user ... <|im_end|> system turn, assistant), which
        stays in the cache as the prompt the reply was made from; the session's system prompt is unchanged."""
        self._check_open()
        options = self._take_instructions(options)
        reply = self._reply
        if reply is not None and reply.open:  # the last reply was abandoned without interrupt
            self.interrupt(reply.text[: reply.said])
        with torch.inference_mode():
            self._end_segment()
            if not self._turn.started:
                self._note_input()
                self._open_turn()
            if options.instructions and options.instructions.strip():
                p = self.speaking.prompt
                self.speaking.feed_ids(p.turn_end() + p.turn_start("system") + p.text(options.instructions.strip()))
            self.speaking.end_user_turn(self._recall())  # closes the user (or instructions) turn
            self._turn = _Turn()
            self._reply = OmniReply(self.speaking.mark())
        steps = self._generate(self._reply, options.speech)
        th = self.speaking.thinker.lm
        events: Iterator[EngineEvent]
        if self.engine.batcher is not None:  # decode steps batched with other sessions'
            events = ModelReply(steps, th, self.speaking.state, self.engine.batcher, None, self.label)
        else:
            events = run_alone(steps)
        self._reply.events = events
        return events

    def _recall(self) -> list[SlotPiece]:
        """The recalled-memory slot of the turn that ends now; the turn's text goes to memory (and to L0, from the
        turn's first cache index: the cache's watch writes it to L3 before the window passes it)."""
        mem = self.memory
        if mem is None:
            return []
        question = " ".join(t.strip() for t in self._turn.typed if t.strip())
        s = self.speaking
        slot = mem.slot(question, lambda text: len(s.prompt.text(text)))
        mem.lane.user_turn(question, self._turn.pos)
        return slot

    def _generate(self, reply: OmniReply, speech: bool) -> Generator[EngineEvent | PoolStep, Any, None]:
        """The reply's events, and its decode steps (`PoolStep`) for the driver to run (omni/streaming/batching.py)."""
        eng = self.engine
        out = ReplyOutput(speech, eng.output_sample_rate, eng.chars_per_second)
        return reply_events(reply, lambda: self.speaking.respond_steps(eng.sampling, eng.stop_ids), out,
                            self._replied)

    def _replied(self, reply: OmniReply) -> None:
        """A reply ran to its end: into the history, and into memory as said."""
        self.history.append(("assistant", reply.text))
        if self.memory is not None:
            self.memory.lane.reply(reply.text, reply.mark.thinker_tokens)

    def interrupt(self, played_text: str) -> None:
        """Keep only `played_text` of the last reply: roll both caches back to the reply's start, prefill the
        played text as the assistant turn and close it (see the module docstring)."""
        self._check_open()
        reply = self._reply
        if reply is None:
            log.warning("interrupt without a reply: nothing to trim")
            return
        close_iterator(reply.events)  # a live reply: stop it first (its session then feeds the turn end)
        if self.memory is not None:  # the reply is remembered as heard
            if reply.open:
                self.memory.lane.reply(played_text, reply.mark.thinker_tokens)
            else:
                self.memory.lane.heard(played_text)
        if reply.open:
            reply.open = False
            self.history.append(("assistant", played_text))
        else:
            if played_text == reply.text:
                return  # the whole reply was heard: the caches already hold it
            replace_last_reply(self.history, played_text)
            if reply.input_after or self._turn.started:
                log.warning("the user spoke after the cut reply: only the text history is trimmed")
                return
        s = self.speaking
        with torch.inference_mode():
            s.rollback(reply.mark)
            s.feed_ids(s.prompt.text(played_text) + s.prompt.turn_end())
        reply.text = played_text

    def close(self) -> None:
        if not self.closed:
            super().close()
            if self._reply is not None:
                close_iterator(self._reply.events)
            self.speaking.state.cache.watch(None)  # the session goes back to the pool; the lane's owner closes it
            self.engine._release(self.speaking)
