"""A tiny random-weight engine that runs the real model path on CPU in milliseconds: for tests and demos.

`TinyLMEngine` holds one seeded random-weight `DecoderLM` (the "tiny" preset with this file's character
vocabulary) shared by all sessions. Each `TinyLMSession` owns its `DecoderState` (a bounded sink + window KV
cache), its seeded `SamplerState` and its history. The conversation is a token stream:

    [<system> instructions <end>] (<user> transcript <end> <assistant> reply <end>)*

- push_audio: every full second of audio becomes one "word" of the transcript, made of two syllables picked
  by the loudness of each half second (deterministic: same audio, same transcript), and is prefilled into
  the cache at once, while the user still speaks.
- push_text: typed text joins the open user turn's transcript as words, prefilled at once.
- respond: one decode step per `next()`: a `TextDelta` per character, an `AudioChunk` (a sine tone, as
  `ToneEngine` speaks) per word of the reply.
- interrupt(played_text): the cache is rolled back to the start of the reply and the played text is queued
  (`pending`) to be fed before the next turn, so the model only ever remembers what the user heard.

Sessions batched on the device: the engine's `BatchedDecoder` pool holds the caches of up to `max_sessions`
sessions (later ones get a cache of their own and run unbatched), and replies are `ModelReply`s, so the
runtime's device worker runs the decode steps of every replying session as one batched forward and a long
prompt in chunks of `token_budget` tokens between them (omni/streaming/batching.py). Pushes prefill at most
`token_budget` tokens of `pending` each; the rest waits for the next push or goes with the reply's prompt.

Invariant (while the cache has not wrapped): the cache holds `conversation_tokens(...)` minus `pending`.
"""

from __future__ import annotations

import logging
import math
import string
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from omni.model.lm.batch import BatchedDecoder, capture_pools
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM, DecoderState
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplerState, SamplingConfig, sample
from omni.streaming.batching import Forward, ModelReply, ReplyGenerator, StepBatcher
from omni.streaming.engine import (
    INPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    SPOKEN_REPLY,
    AudioChunk,
    EngineEvent,
    EngineSessionBase,
    History,
    LiveReply,
    ReplyDone,
    ResponseOptions,
    TextDelta,
    TranscriptDelta,
    check_rgb_frame,
    replace_last_reply,
)
from omni.streaming.engines.tone import word_tone

log = logging.getLogger(__name__)

SYSTEM, USER, ASSISTANT, END = 0, 1, 2, 3
SPECIALS = ("<system>", "<user>", "<assistant>", "<end>")
CHARS = string.ascii_letters + string.digits + " .,;:!?'\"-()\n"
SYLLABLES = ("mu", "ka", "lo", "ri", "sa", "te", "vo", "ni")  # by loudness: silence "mu" ... loud "ni"


class CharTokenizer:
    """One token per character of `CHARS` after four role tokens; other characters become "?"."""

    def __init__(self) -> None:
        self._ids = {c: len(SPECIALS) + i for i, c in enumerate(CHARS)}
        self.vocab_size = len(SPECIALS) + len(CHARS)

    def encode(self, text: str) -> list[int]:
        unknown = self._ids["?"]
        return [self._ids.get(c, unknown) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(SPECIALS[i] if i < len(SPECIALS) else CHARS[i - len(SPECIALS)] for i in ids)


_ROLE_TOKEN = {"user": USER, "system": SYSTEM}


@dataclass(frozen=True)
class _AudioMark:
    """The session where the open turn's audio began: what `discard_audio` rolls back to."""

    cache_length: int
    position: int
    pending: list[int]
    words: list[str]
    user_open: bool


def conversation_tokens(tok: CharTokenizer, instructions: str | None, history: Sequence[tuple[str, str]]) -> list[int]:
    """The whole conversation as the model sees it, rendered from text (the offline reference)."""
    ids = [SYSTEM, *tok.encode(instructions), END] if instructions else []
    for role, text in history:
        ids += [_ROLE_TOKEN.get(role, ASSISTANT), *tok.encode(text), END]
    return ids


def transcribe_block(pcm: np.ndarray) -> str:
    """A "word" for a block of audio: one syllable per half, chosen by its loudness (-60 dBFS .. 0 in 8 steps)."""
    word = ""
    for half in np.array_split(pcm, 2):
        rms = float(np.sqrt(np.mean(np.square(half, dtype=np.float64)))) if len(half) else 0.0
        level = int((20 * math.log10(rms + 1e-9) + 60) / 7.5)
        word += SYLLABLES[min(max(level, 0), len(SYLLABLES) - 1)]
    return word


class TinyLMEngine:
    """Seeded random weights, character vocabulary; sessions are seeded `seed`, `seed + 1`, ... as opened."""

    name = "tiny"

    def __init__(
        self,
        *,
        seed: int = 0,
        window: int = 256,
        max_new_tokens: int = 48,
        min_new_tokens: int = 16,
        temperature: float = 0.8,
        max_history: int = 32,
        step_delay: float = 0.0,
        seconds_per_char: float = 0.06,
        max_sessions: int = 8,
        token_budget: int = 64,
        input_sample_rate: int = INPUT_SAMPLE_RATE,
        output_sample_rate: int = OUTPUT_SAMPLE_RATE,
    ) -> None:
        if not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError(f"need 0 <= min_new_tokens <= max_new_tokens, got {min_new_tokens}, {max_new_tokens}")
        self.tokenizer = CharTokenizer()
        self.config = replace(
            DecoderConfig.from_name("tiny"), vocab_size=self.tokenizer.vocab_size, eos_token_ids=(END,)
        )
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
            torch.manual_seed(seed)
            self.model = DecoderLM(self.config).eval()
        # a reply is at most max_new_tokens long, so rolling one back never drops more than one chunk: exact
        self.cache_config = CacheConfig(sinks=4, window=window, chunk=max(64, max_new_tokens))
        self.sampling = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens)
        self.min_new_tokens = min_new_tokens
        self.max_history = max_history
        self.seed = seed
        self.step_delay = step_delay
        self.seconds_per_char = seconds_per_char
        self.input_sample_rate = input_sample_rate
        self.output_sample_rate = output_sample_rate
        # one KV pool row per session up to max_sessions; a step of the device worker decodes them together
        self.decoder = BatchedDecoder(self.model, max_sessions, self.cache_config, token_budget)
        # (the model lives on the CPU, so this captures nothing; kept so the engine reads as the omni one does)
        self.graph_captures = capture_pools({"tiny": self.decoder})
        self.batcher = StepBatcher(self.decoder)
        self._lock = threading.Lock()
        self._opened = 0
        self.open_sessions = 0

    def open_session(self, *, instructions: str | None = None, voice: str | None = None) -> TinyLMSession:
        with self._lock:
            seed = self.seed + self._opened
            self._opened += 1
            self.open_sessions += 1
            sid = self.decoder.open() if len(self.decoder.sessions) < self.decoder.max_sessions else None
        return TinyLMSession(self, instructions, seed, sid)

    def _session_closed(self, sid: int | None) -> None:
        with self._lock:
            self.open_sessions -= 1
            if sid is not None:
                self.decoder.leave(sid)


class TinyLMSession(EngineSessionBase):
    """One conversation's state. Not thread-safe: the runtime calls it from one worker at a time."""

    def __init__(self, engine: TinyLMEngine, instructions: str | None, seed: int, sid: int | None) -> None:
        """`sid`: the session's row in the engine's batch pool (None: a cache of its own, never batched)."""
        super().__init__()
        self.history: History = deque(maxlen=engine.max_history)
        self.engine = engine
        self.instructions = instructions
        self.label = f"session-{seed}"
        self.sid = sid
        self.state: DecoderState = (engine.model.init_state(engine.cache_config) if sid is None
                                    else engine.decoder.sessions[sid].state)
        self.sampler = SamplerState.create(engine.config.vocab_size, seed=seed)
        tok = engine.tokenizer
        self.pending: list[int] = [SYSTEM, *tok.encode(instructions), END] if instructions else []
        self._audio = np.zeros(0, np.float32)  # the unfinished second of this turn's audio
        self._words: list[str] = []  # the transcript of the open user turn
        self._user_open = False
        self._audio_mark: _AudioMark | None = None  # where the open turn's audio began (discard_audio)
        self._reply: LiveReply[tuple[int, int]] | None = None  # mark: (cache length, next position)
        self._prompt: Forward | None = None  # the reply's prompt while it is being prefilled
        self._banned = torch.tensor([SYSTEM, USER, ASSISTANT])  # never inside a reply
        self._banned_early = torch.tensor([SYSTEM, USER, ASSISTANT, END])  # before min_new_tokens

    # ---- input ----

    def push_audio(self, pcm: np.ndarray, timestamp: float) -> list[EngineEvent]:
        self._check_open()
        if pcm.dtype != np.float32 or pcm.ndim != 1:
            raise ValueError(f"push_audio expects float32 mono [samples], got {pcm.dtype} {pcm.shape}")
        sr = self.engine.input_sample_rate
        if self._audio_mark is None:
            self._audio_mark = _AudioMark(self.state.cache.length, self.state.next_position, list(self.pending),
                                          list(self._words), self._user_open)
        self._audio = np.concatenate([self._audio, pcm])
        out: list[EngineEvent] = []
        while len(self._audio) >= sr:
            block, self._audio = self._audio[:sr], self._audio[sr:]
            out.append(TranscriptDelta(self._add_word(transcribe_block(block))))
        return out

    def push_text(self, text: str) -> list[EngineEvent]:
        """Typed words join the open user turn's transcript, prefilled at once."""
        self._check_open()
        self._audio_mark = None  # typed text closes the audio before it (discard_audio keeps that)
        if text.strip():
            self._add_word(text.strip())
        return []

    def discard_audio(self) -> None:
        """Roll the cache back to where the open turn's audio began and forget its words and unfinished second."""
        self._check_open()
        mark, self._audio_mark = self._audio_mark, None
        self._audio = np.zeros(0, np.float32)
        if mark is None:
            return
        cache = self.state.cache
        if cache.length - mark.cache_length > cache.cfg.chunk:  # KVCache.truncate: no longer exact
            log.warning("discarding %d prefilled tokens of audio: past the cache's chunk of %d, the window keeps "
                        "a gap where they overwrote it", cache.length - mark.cache_length, cache.cfg.chunk)
        cache.truncate(mark.cache_length)
        self.state.next_position = mark.position
        self.pending, self._words, self._user_open = mark.pending, mark.words, mark.user_open

    def _close_audio(self) -> None:
        """The turn's audio ends: a last word for a tail of at least 0.25 s."""
        if len(self._audio) >= self.engine.input_sample_rate // 4:
            self._add_word(transcribe_block(self._audio))
        self._audio = np.zeros(0, np.float32)
        self._audio_mark = None

    def push_video(self, frame: np.ndarray, timestamp: float) -> None:
        self._check_open()
        check_rgb_frame(frame)

    def end_turn(self) -> list[EngineEvent]:
        """Close the user's message (a last word for a tail of at least 0.25 s) and prefill its end."""
        self._check_open()
        self._close_audio()
        transcript = self._close_user_turn()
        self._prefill()
        return [TranscriptDelta(transcript, final=True)]

    def _add_word(self, word: str) -> str:
        """Prefill one transcript word now; returns the text it adds to the transcript."""
        piece = word if not self._words else " " + word
        if not self._user_open:
            self.pending.append(USER)
            self._user_open = True
        self._words.append(word)
        self.pending += self.engine.tokenizer.encode(piece)
        self._prefill()
        return piece

    def _prefill(self) -> None:
        """Feed `pending` now, at most one token budget of it: a push never holds the device worker longer
        than that (the rest goes with the next push, or in chunks with the reply's prompt)."""
        n = min(len(self.pending), self.engine.batcher.token_budget)
        if n:
            self._feed(self.pending[:n])
            del self.pending[:n]

    def _close_user_turn(self) -> str:
        if not self._user_open:
            self.pending.append(USER)
        self.pending.append(END)
        transcript = " ".join(self._words)
        self.history.append(("user", transcript))
        self._words, self._user_open = [], False
        return transcript

    # ---- output ----

    def respond(self, options: ResponseOptions = SPOKEN_REPLY) -> Iterator[EngineEvent]:
        """`options.instructions` guide this reply only: a system message just before the reply's prompt (the
        session's instructions stay first and unchanged); it stays in the history as part of the prompt this reply
        was made from, and later replies get none unless they ask again."""
        self._check_open()
        options = self._take_instructions(options)
        self._audio_mark = None  # the turn's audio is answered: no longer to be discarded
        if self._reply is not None and self._reply.open:  # the last reply was abandoned without interrupt
            self.interrupt(self._reply.text)
        if self._prompt is not None:  # the last reply was abandoned while its prompt was being prefilled
            self.interrupt("")
        if self._user_open:
            self._close_user_turn()
        self._reply = None  # until the generator's first step has prefilled the prompt
        steps = self._generate(options.speech, options.instructions)
        return ModelReply(steps, self.engine.model, self.state, self.engine.batcher, self.sid, self.label)

    def _generate(self, speech: bool, instructions: str | None = None) -> ReplyGenerator:
        """The reply's steps; each `yield Forward(ids)` gets the logits [1, V] of feeding `ids`."""
        eng = self.engine
        t0 = time.perf_counter()
        extra: list[int] = []
        if instructions and instructions.strip():
            extra = [SYSTEM, *eng.tokenizer.encode(instructions.strip()), END]
            self.history.append(("system", instructions.strip()))
        prompt = self._prompt = Forward([*self._take_pending(), *extra, ASSISTANT])
        logits = yield prompt
        assert logits is not None
        self._prompt = None
        reply = self._reply = LiveReply((self.state.cache.length, self.state.next_position))
        t1 = time.perf_counter()
        word, words = "", 0
        for i in range(eng.sampling.max_new_tokens):
            if eng.step_delay:
                time.sleep(eng.step_delay)
            banned = self._banned if i >= eng.min_new_tokens else self._banned_early
            logits = logits.index_fill(1, banned, float("-inf"))  # out of place: inference-mode logits
            token = int(sample(logits, eng.sampling, self.sampler)[0])
            if token == END:
                break
            ch = eng.tokenizer.decode([token])
            reply.text += ch
            yield TextDelta(ch)
            word += ch
            if (ch.isspace() and word.strip()) or len(word) >= 8:
                if speech:
                    yield AudioChunk(word_tone(eng.output_sample_rate, eng.seconds_per_char, len(word), words), word)
                word, words = "", words + 1
            logits = yield Forward([token])
            assert logits is not None
        if word and speech:
            yield AudioChunk(word_tone(eng.output_sample_rate, eng.seconds_per_char, len(word), words), word)
        text = reply.text
        reply.open = False
        self.history.append(("assistant", text))
        self.pending.append(END)
        stats = {
            "prompt_tokens": float(len(prompt.ids)),
            "new_tokens": float(len(reply.text)),
            "prefill_seconds": t1 - t0,
            "decode_seconds": time.perf_counter() - t1,
        }
        yield ReplyDone(text, stats)

    def interrupt(self, played_text: str) -> None:
        """Keep only `played_text` of the last reply: roll the cache back to the reply's start and queue the
        played text, then whatever the user said since (re-rendered from text), to be fed next."""
        self._check_open()
        self._audio_mark = None  # the cache is rewritten below: a mark taken before no longer holds
        reply = self._reply
        tok = self.engine.tokenizer
        if reply is None:  # the reply never reached its first step: remember the played part as a reply
            if self._prompt is not None:  # its prompt was being prefilled: the unfed part ends with ASSISTANT
                self.pending, self._prompt = [*self._prompt.left, *tok.encode(played_text), END], None
            else:
                self.pending += [ASSISTANT, *tok.encode(played_text), END]
            self.history.append(("assistant", played_text))
            return
        if reply.open:  # cut while generating: the reply is not in the history yet
            reply.open = False
            self.history.append(("assistant", played_text))
            at = len(self.history) - 1
        else:
            at = replace_last_reply(self.history, played_text)
            if at < 0:
                log.warning("the reply to truncate has left the %d-entry history: nothing kept", len(self.history))
                return
        cache = self.state.cache
        start, start_position = reply.mark
        if cache.length - start > cache.cfg.chunk:
            # the user spoke on for more than a chunk after the reply: rolling back that far would lose window
            # tokens (KVCache.truncate), so the model keeps the whole reply and only the text history is trimmed
            log.warning("reply %d tokens back: only the text history is trimmed", cache.length - start)
            return
        cache.truncate(start)
        self.state.next_position = start_position
        later = list(self.history)[at + 1 :]  # user turns after the reply
        tail = [END] + conversation_tokens(tok, None, later)
        if self._user_open:
            tail += [USER, *tok.encode(" ".join(self._words))]
        self.pending = [*tok.encode(played_text), *tail]

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.engine._session_closed(self.sid)

    # ---- model ----

    def _feed(self, ids: list[int]) -> torch.Tensor:
        """Prefill `ids` (or decode one token); logits [1, V] of the last one."""
        out = self.engine.model(self.state, input_ids=torch.tensor([ids], dtype=torch.long))
        assert out.logits is not None
        return out.logits

    def _take_pending(self) -> list[int]:
        ids, self.pending = self.pending, []
        return ids
