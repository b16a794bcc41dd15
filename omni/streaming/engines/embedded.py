"""The embedded default engine: a spoken conversation on a CPU from packaged models only.

    user audio (16 kHz) --Whisper base, transcribed at the pause--> transcript
      --SmolLM2-135M-Instruct or --llm (history in the session's bounded sink+window cache)--> reply text deltas
      --phrase splitter--> a voice of the fixed list (Piper joe by default, 22,050 Hz) --resample--> 24 kHz
      speech, one chunk per phrase

Whisper is not a streaming model: while the user speaks it only re-transcribes the utterance for a live
caption every `WhisperConfig.partial_interval_s` (1 s of audio, ~0.2 s of compute: a real-time factor of
~0.2 on 2 cores); the transcript that is answered is made at the pause (`prepare_turn`), so `end_turn` has
nothing left to recognise when the turn ends there.

Speech starts with the first phrase of the reply and continues phrase by phrase while the rest of the reply
is still being decoded: each phrase is synthesised as soon as its text is complete (Piper at a real-time
factor of ~0.25 under load, espeak-ng ~0.005), so the reply's audio runs ahead of playback from the first
phrase on. A barge-in closes the reply between phrases: the phrase being made is the most that is wasted.

Turn-taking (VAD), barge-in and pacing belong to the runtime; this engine recognises whatever audio it is
given between `end_turn` calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from omni.model.embedded.phrases import PhraseSplitter, speakable
from omni.model.embedded.voices import DEFAULT_VOICE, VOICES, SpeechSynthesizer, VoiceError, VoiceRegistry
from omni.model.embedded.whisper import WhisperModel, WhisperRecognizer
from omni.model.lm.chat_session import ChatSession
from omni.model.lm.decoder import default_cache_config
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders import LoadedLM, load_lm
from omni.model.pcm import StreamingResampler
from omni.streaming.engine import (
    INPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    SPOKEN_REPLY,
    AudioChunk,
    EngineEvent,
    EngineSessionBase,
    ReplyDone,
    ResponseOptions,
    TextDelta,
    TranscriptDelta,
    TurnEndLikely,
    Working,
    close_iterator,
)
from omni.streaming.memory_lane import MemoryLane, SlotEcho
from omni.streaming.transcript import TranscriptDeltas

__all__ = ["DEFAULT_SYSTEM_PROMPT", "EmbeddedEngine", "EmbeddedSession"]

# Short on purpose: every token of it is prefilled on the first turn, and the 135M model follows a short,
# concrete instruction better than a long one. "No lists or markdown": the reply is read aloud.
DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Answer in one or two short spoken sentences. Do not use lists or markdown."
)
# Voice replies are short; 96 tokens is ~70 words, ~25 s of speech at 175 words per minute.
DEFAULT_SAMPLING = SamplingConfig(temperature=0.0, repetition_penalty=1.1, max_new_tokens=96)
# 2,044 + 4 sink tokens hold ~15 turns of a voice conversation; older turns slide out of the window.
DEFAULT_WINDOW = 2044
# Prompt tokens fed per device-worker job: another session's next step waits behind at most this many. SmolLM2-135M
# on one thread (2-core machine) costs ~5 ms CPU a prompt token at any chunk size from 16 to 256 (a decode step
# ~9 ms), so 32 tokens (~0.16 s) keep a reply beside a long prefill above speaking speed at no cost in throughput.
PREFILL_CHUNK = 32


# Clients of the Realtime protocol name OpenAI's voices; each maps onto a voice of the fixed list
# (omni.model.embedded.voices.VOICES) so that a session.update with one of them works: the male and neutral ones
# (alloy is most clients' default) onto the neural joe, the female ones onto espeak-ng's female variant (the
# only female voice packaged), ballad (British) onto espeak-ng's British voice. Any other name is refused.
REALTIME_VOICES = {
    "alloy": "joe", "ash": "joe", "echo": "joe", "verse": "joe", "cedar": "joe", "ballad": "espeak-british",
    "coral": "espeak-female", "sage": "espeak-female", "shimmer": "espeak-female", "marin": "espeak-female",
}  # fmt: skip


def voice_key(voice: str) -> str:
    """The fixed list's name for `voice` (one of `VOICES` or `REALTIME_VOICES`); VoiceError for anything else,
    listing both, so that no client string goes further than a dictionary lookup."""
    key = REALTIME_VOICES.get(voice, voice) if isinstance(voice, str) else voice
    if key not in VOICES:
        raise VoiceError(
            f"unknown voice {voice!r}: choose one of {', '.join(VOICES)} (or a Realtime voice: "
            f"{', '.join(REALTIME_VOICES)})"
        )
    return key


@dataclass
class _TurnClock:
    end_turn_at: float = 0.0  # perf_counter when end_turn() was called (0: respond without end_turn)
    transcript: str = ""
    typed: str = ""
    asr_finish_s: float = 0.0
    tts_seconds: float = 0.0
    speech_seconds: float = 0.0
    first_audio_s: float = 0.0


_QUESTION_STARTS = frozenset(
    "what who whom whose which when where why how is are was were do does did can could will would should shall "
    "may might have has am".split()
)


def as_sentence(transcript: str) -> str:
    """The transcript as the sentence a person would type: the LM imitates its input, and answers "what is
    the capital of france" in lower case and worse than "What is the capital of france?". Whisper already
    writes sentences; text that ends in . ? or ! keeps its own punctuation."""
    words = transcript.split()
    if not words:
        return ""
    text = " ".join(words)
    text = text[0].upper() + text[1:]
    text = " ".join("I" if w == "i" else ("I'" + w[2:] if w.startswith("i'") else w) for w in text.split())
    if text[-1] in ".?!":
        return text
    return text + ("?" if words[0].lower() in _QUESTION_STARTS else ".")


class EmbeddedEngine:
    """Weights shared by all sessions: the LM, Whisper and the voices; recognisers are per session."""

    name = "embedded"
    judges_turn_end = True  # prepare_turn says how likely the turn is finished (omni.streaming.vad: semantic end)
    input_sample_rate = INPUT_SAMPLE_RATE
    output_sample_rate = OUTPUT_SAMPLE_RATE

    def __init__(
        self,
        *,
        model: str | None = None,
        lm: LoadedLM | None = None,
        asr: WhisperModel | None = None,
        voice: str = DEFAULT_VOICE,
        speak: bool = True,
        listen: bool = True,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
        window: int = DEFAULT_WINDOW,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        """`model`: a GGUF file or Hugging Face decoder directory for load_lm (None: the packaged
        SmolLM2-135M-Instruct); `lm`: an already loaded one (shared, e.g. by tests); `asr`: an already loaded
        Whisper (None: the packaged Whisper base); `voice`: the default voice, a name of `VOICES` or
        `REALTIME_VOICES`; `speak=False`: replies are text only (no `AudioChunk` events); `listen=False`: typed
        turns only (Whisper, ~3 s to load, is not loaded; `push_audio` raises). `system_prompt` None: the
        chat template's own. `prefill_chunk`: prompt tokens fed per worker job (other sessions' jobs run between)."""
        self.default_voice = voice_key(voice)  # refused before any model is loaded
        self.lm = lm if lm is not None else load_lm(model)
        self.speak = speak
        self.voices = VoiceRegistry()
        if speak:  # load the voice and fail here, not mid-reply (Piper's first run also sets up its graph)
            self.voices.synthesizer(self.default_voice).synth_int16("ok")
        self.system_prompt = system_prompt
        self.sampling = sampling
        self.cache = default_cache_config(self.lm.model.cfg, window=window)
        self.prefill_chunk = prefill_chunk
        threads = torch.get_num_threads()
        self.asr = asr if asr is not None or not listen else WhisperModel()
        # Loading CTranslate2 can set OpenMP's thread count process-wide (measured: torch's 1 became 2), and
        # the LM decodes ~2x faster on 1 thread than on 2 when the other core is busy (omni/app/serve.py).
        torch.set_num_threads(threads)

    def open_session(self, *, instructions: str | None = None, voice: str | None = None) -> EmbeddedSession:
        """A new conversation; `voice` is a name of `VOICES` or `REALTIME_VOICES` (VoiceError otherwise)."""
        key = voice_key(voice) if voice is not None else self.default_voice
        synth = self.voices.synthesizer(key) if self.speak else None
        chat = ChatSession(  # prompts fed a chunk per worker job: other sessions' steps run between
            self.lm, system_prompt=instructions or self.system_prompt, sampling=self.sampling, cache=self.cache,
            prefill_chunk=self.prefill_chunk,
        )
        recognizer = WhisperRecognizer(self.asr) if self.asr is not None else None
        session = EmbeddedSession(chat, recognizer, synth, self.output_sample_rate)
        session.default_instructions = self.system_prompt
        return session


class EmbeddedSession(EngineSessionBase):
    """One conversation: its recogniser, its chat (history in a bounded cache) and its voice."""

    def __init__(
        self,
        chat: ChatSession,
        recognizer: WhisperRecognizer | None,
        synth: SpeechSynthesizer | None,
        output_rate: int,
    ) -> None:
        """`recognizer` None: typed turns only; `synth` None: replies in text only."""
        super().__init__()
        self.chat = chat
        self.recognizer = recognizer
        self.synth = synth
        self.output_rate = output_rate
        self._resampler = StreamingResampler(synth.sample_rate if synth else output_rate, output_rate)
        self._turn = _TurnClock()
        self._typed: list[str] = []  # text messages of the open user turn
        self._history_prefilled = False
        # Recognised pieces of the current turn: the recogniser's utterance is finished at each pause
        # (prepare_turn); a turn that goes on after a pause reopens it (WhisperRecognizer.resume), or, after
        # typed text, continues in a new utterance whose text is appended.
        self._pieces: list[str] = []
        self._prepared = False  # the turn so far is recognised and prefilled; no audio came since
        self._captions = TranscriptDeltas()  # what this turn's caption deltas have said
        self._typed_at = 0  # pieces of the turn before its last typed message (discard_audio keeps them)
        self._prompt_now: str | None = None  # instructions set mid-conversation (set_instructions), latest
        self.memory: MemoryLane | None = None  # set by the runtime (use_memory); its owner closes it

    def use_memory(self, lane: MemoryLane) -> None:
        """Read and write memory through `lane` (omni.streaming.memory_lane): transcripts and replies as heard go in,
        each turn's recall goes into a system message just before the user's (the recalled-memory slot). The chat's
        KV cache tells the lane before its window slides, so what leaves it is written below first (L0)."""
        self.memory = lane
        self.chat.state.cache.watch(lane.slid)

    def close(self) -> None:
        if not self.closed:
            self.chat.state.cache.watch(None)  # the lane's owner closes it; the cache stops telling it
        super().close()

    def _recalled(self, message: str) -> str:
        """The turn's recalled-memory slot, led by the system prompt once the prompt has left the KV window: the
        cache keeps 4 sink tokens, so past its window the instructions are gone, and the layout wants the slot right
        after them (omni.memory.window). SmolLM2-135M, 6 turns past a 320-token window, asked "What is my locker code?":
        with the instructions first, 4 of 4 answers had the recalled digits; without, 5 of 24 over 12 slot wordings.
        While the prompt is still whole in view it is not repeated: a second copy just before the question made
        the LM refuse ("as an AI, I don't have personal data") where one copy did not: 3 of 9 answers right against
        7 of 9 on the tuning facts of benchmarks/fact_recall.py (scenario alone: a new session, the fact recalled)."""
        slot = self.memory.slot(message) if self.memory is not None else ""
        first = self.chat.messages[0] if self.chat.messages else None
        if not slot or first is None or first["role"] != "system":
            return slot
        cache = self.chat.state.cache
        # counted from where the turn starts, not from the cache's length: a turn prefilled at the pause is in the
        # cache by the end of the turn, and counting it twice made the end of turn add the prompt that the pause
        # had not, so the prepared turn no longer matched and was fed again (330 tokens, 2.1 s, in
        # benchmarks/embedded_turns.py --prepare --memory --seed-facts 60 at turn 5)
        if self.chat.turn_start + self._lookahead(slot, message) <= cache.cfg.sinks + cache.cfg.window:
            return slot  # every query of this turn still sees the whole system prompt
        return f"{self._prompt_now or first['content']}\n{slot}"  # the instructions in force

    def _lookahead(self, slot: str, message: str) -> int:
        """Tokens this turn may add to the cache: its slot and message (tokenised: ~0.1 ms), the chat template's two
        headers (< 16 tokens) and the longest reply."""
        encode = self.chat.lm.tokenizer.encode
        return len(encode(slot)) + len(encode(message)) + 16 + self.chat.sampling.max_new_tokens

    # ---- input side ---------------------------------------------------------------------------------

    @property
    def _in_utterance(self) -> bool:
        return self.recognizer is not None and self.recognizer.in_utterance

    def push_audio(self, pcm: np.ndarray, timestamp: float) -> list[EngineEvent]:
        self._check_open()
        if self.recognizer is None:
            raise RuntimeError("this embedded engine was made with listen=False: it takes typed turns only")
        if not self._history_prefilled:  # the system prompt goes into the cache while the user speaks, a chunk a push
            self.chat.prefill_history(self.chat.prefill_chunk)
            self._history_prefilled = not self.chat.backlog
        if self._prepared:  # the user went on after a pause: the speculative turn is not the turn
            self._prepared = False
            self.chat.drop_prefilled_turn()
            if self._pieces and self.recognizer.resume():  # recognise the turn as one utterance
                self._pieces.pop()
        partial = self.recognizer.push(np.asarray(pcm))
        if partial and self._pieces:
            partial = " ".join([*self._pieces, partial])
        caption = self._captions.update(partial) if partial else ""  # Whisper revises its last words
        return [TranscriptDelta(caption)] if caption else []

    def push_video(self, frame: np.ndarray, timestamp: float) -> None:
        self._check_open()  # no vision in this engine

    def push_text(self, text: str) -> list[EngineEvent]:
        """Typed text joins the turn after what was said; the LM gets it as written."""
        self._check_open()
        if self._prepared:  # the turn goes on after the pause: the speculative turn is not the turn
            self._prepared = False
            self.chat.drop_prefilled_turn()
        if self._in_utterance:
            self._finish_utterance()
        self._typed_at = len(self._pieces)
        if text.strip():
            self._typed.append(text.strip())
        return []

    def discard_audio(self) -> None:
        """Forget the turn's audio since its last typed message: the recogniser's utterance (not transcribed),
        the pieces recognised at its pauses, and a turn prefilled speculatively at the last pause."""
        self._check_open()
        if self._prepared:
            self._prepared = False
            self.chat.drop_prefilled_turn()
        if self.recognizer is not None:
            self.recognizer.discard()
        del self._pieces[self._typed_at :]
        self._captions.reset()

    def set_instructions(self, instructions: str | None) -> None:
        """The next reply's system message carries them (as a reply's own instructions); later turns see them in
        the history, and once the opening prompt has left the KV window they lead the recalled-memory slot."""
        super().set_instructions(instructions)
        self._prompt_now = self._new_instructions

    def _finish_utterance(self) -> None:
        assert self.recognizer is not None  # (only called inside an utterance)
        self._pieces.append(self.recognizer.finish())

    def prepare_turn(self) -> list[EngineEvent]:
        """The user paused: finish recognising the turn so far and prefill it as the next user message, so
        that if the turn ends here `end_turn` has nothing left to recognise and the reply starts with the
        assistant header. If the user goes on, the next `push_audio` undoes the prefill."""
        self._check_open()
        if self._in_utterance:
            self._finish_utterance()
        self._prepared = True
        sentence = as_sentence(" ".join(p for p in self._pieces if p))
        if sentence:  # scored on the way (one forward call more): is the message finished? (omni.model.lm.end_of_turn)
            self.chat.prefill_turn(sentence, self._recalled(sentence), score_end=True)
        p = self.chat.end_probability if sentence else None
        return [TurnEndLikely(p)] if p is not None else []

    def end_turn(self) -> list[EngineEvent]:
        self._check_open()
        t0 = time.perf_counter()
        if self._in_utterance:
            self._finish_utterance()
        text = " ".join(p for p in self._pieces if p)
        typed = " ".join(self._typed)
        self._pieces, self._typed, self._prepared, self._typed_at = [], [], False, 0
        self._captions.reset()
        self._turn = _TurnClock(end_turn_at=t0, transcript=text, typed=typed, asr_finish_s=time.perf_counter() - t0)
        return [TranscriptDelta(text, final=True)] if text or not typed else []

    # ---- output side --------------------------------------------------------------------------------

    def respond(self, options: ResponseOptions = SPOKEN_REPLY) -> Iterator[EngineEvent]:
        """`options.speech` False: text only (no synthesis). `options.instructions` guide this reply only: they
        go in the turn's system message, just before the user's (with the recalled memory, see `_recalled`), on
        top of the session's system prompt, which stays first and unchanged (rewriting it would rebuild the whole
        cache); the message stays in the history as the prompt this reply was made from, and later turns get
        none unless they ask again."""
        self._check_open()
        options = self._take_instructions(options)
        if self._in_utterance or self._pieces or self._typed:  # no end_turn() yet: finish the input here
            yield from self.end_turn()
        turn = self._turn
        if turn.end_turn_at == 0.0:
            turn.end_turn_at = time.perf_counter()
        self._turn = _TurnClock()  # the transcript is answered once
        message = " ".join(m for m in (as_sentence(turn.transcript), turn.typed) if m)
        if not message:
            yield ReplyDone("", self._stats(turn))
            return
        yield from self._reply(message, turn, options.speech, options.instructions)

    def _reply(self, message: str, turn: _TurnClock, speech: bool, instructions: str | None = None
               ) -> Iterator[EngineEvent]:
        splitter = PhraseSplitter()
        recalled = self._recalled(message)
        slot = "\n".join(p for p in (recalled, (instructions or "").strip()) if p)
        echo = SlotEcho() if recalled else None  # the LM may read a slot line's stamp back: not shown nor spoken
        shown: list[str] = []
        start = self.chat.turn_start  # the turn's first cache index (the reply's is a little later)
        if self.memory is not None:
            self.memory.user_turn(message, start)
        stream = self.chat.stream_reply(message, slot)
        try:
            for delta in stream:
                if not delta:  # between two chunks of the prompt: this step ends here
                    yield Working()
                    continue
                if echo is not None and not (delta := echo.push(delta)):
                    continue
                shown.append(delta)
                yield TextDelta(delta)
                for phrase in splitter.push(delta):
                    if speech:
                        yield from self._speak(phrase, turn, final=False)
            if echo is not None and (tail := echo.flush()):
                shown.append(tail)
                yield TextDelta(tail)
                for phrase in splitter.push(tail):
                    if speech:
                        yield from self._speak(phrase, turn, final=False)
            rest = splitter.flush()
            if speech:
                yield from self._speak(rest or "", turn, final=True)
        finally:
            close_iterator(stream)  # cancelled: the chat holds what was generated, which interrupt() trims
            last = self.chat.messages[-1]
            if self.memory is not None and last["role"] == "assistant":
                self.memory.reply("".join(shown) if echo is not None else last["content"], start)
        yield ReplyDone("".join(shown) if echo is not None else self.chat.messages[-1]["content"], self._stats(turn))

    def _speak(self, phrase: str, turn: _TurnClock, *, final: bool) -> Iterator[AudioChunk]:
        if self.synth is None:
            return
        t0 = time.perf_counter()
        words = speakable(phrase)
        pcm = self._resampler.push(self.synth.synth_int16(words)) if words else np.zeros(0, np.float32)
        if final:
            pcm = np.concatenate([pcm, self._resampler.flush()])
        turn.tts_seconds += time.perf_counter() - t0
        if pcm.size == 0 and not phrase:
            return
        turn.speech_seconds += pcm.size / self.output_rate
        if turn.first_audio_s == 0.0 and pcm.size:
            turn.first_audio_s = time.perf_counter() - turn.end_turn_at
        yield AudioChunk(pcm, text=phrase)

    def _stats(self, turn: _TurnClock) -> dict[str, float]:
        s = self.chat.last
        return {
            "asr_finish_s": turn.asr_finish_s,
            "asr_rtf": self.recognizer.stats.real_time_factor if self.recognizer is not None else 0.0,
            "first_audio_s": turn.first_audio_s,
            "first_token_s": s.first_token_seconds,
            "prompt_tokens": float(s.prompt_tokens),
            "prefill_s": s.prefill_seconds,
            "new_tokens": float(s.new_tokens),
            "decode_tok_s": s.decode_tokens_per_second,
            "tts_s": turn.tts_seconds,
            "speech_s": turn.speech_seconds,
            "tts_rtf": turn.tts_seconds / turn.speech_seconds if turn.speech_seconds else 0.0,
        }

    def interrupt(self, played_text: str) -> None:
        """Keep only `played_text` of the last reply in the history (and in the cache on the next turn)."""
        self._check_open()
        self._resampler.flush()  # the cut reply's filter tail must not lead into the next reply
        messages = self.chat.messages
        if messages and messages[-1]["role"] == "assistant":
            self.chat.truncate_last_reply(played_text)
        if self.memory is not None:
            self.memory.heard(played_text)
