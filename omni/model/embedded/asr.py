"""Streaming speech recognition with pocketsphinx and the en-us model inside its wheel: the embedded engine's
old recogniser, kept as the baseline of benchmarks/asr_compare.py (the engine uses `whisper.py`, whose word
error rate on held-out voices is 0.09 against pocketsphinx's 0.55). `SAMPLE_RATE`, `ASRError` and
`RecognizerStats` are shared with the Whisper recogniser.

Audio is decoded as it arrives (`push`), so at the end of a turn only the last few frames and the final
search pass are left (`finish`). A partial hypothesis is read back at most every `partial_interval_s`
of audio, because each read is a backtrace over the whole utterance so far.

Cepstral mean normalisation: the en-us acoustic model was trained with per-utterance (batch) means, while
streaming needs the running ("live") estimate, which starts from a generic initial value and moves towards
the speaker's and channel's mean over the first utterances. When an utterance moved the estimate far (by
more than `redecode_cmn_shift`, in cepstral units: the first two or three turns of a session, or a change of
microphone), `finish` decodes the utterance's audio again with the updated mean. On the spoken questions of
the tests that takes a fresh recogniser's word error rate from 0.46 to 0.37, at the cost of one more pass
over the utterance (~0.1 x its duration) on those turns only.

A pocketsphinx `Decoder` bundles the acoustic model, the dictionary and the LM with the search state, so
each `StreamingRecognizer` (one per conversation) owns one. With the conversational LM it loads in ~1 s
(under load, on 2 cores) and holds ~50 MB; with the general en-us LM ~1.3 s and ~90 MB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from omni.model.pcm import to_float32, to_int16

__all__ = ["ASRError", "RecognizerConfig", "RecognizerStats", "StreamingRecognizer", "SAMPLE_RATE"]

SAMPLE_RATE = 16000


class ASRError(RuntimeError):
    """pocketsphinx is missing or refused its configuration."""


@dataclass(frozen=True)
class RecognizerConfig:
    """Decoder settings; None keeps pocketsphinx's default (the general en-us trigram LM and dictionary).

    `extra` passes any other pocketsphinx option by name (e.g. {"beam": 1e-60})."""

    lm: str | None = None  # an ARPA or binary LM file instead of the general en-us LM
    dictionary: str | None = None  # a pronunciation dictionary instead of cmudict-en-us
    language_weight: float | None = None  # pocketsphinx -lw (default 6.5)
    # Synthetic and gated audio has runs of exact zeros, whose log energy breaks cepstral normalisation; a
    # dither of +1 LSB on a random quarter of the samples avoids that (the "1/2 bit noise" pocketsphinx's own
    # dither adds). Ours, not pocketsphinx's: its generator is one per process, so recognisers running side
    # by side changed each other's noise and transcripts (general LM, France question at 150 wpm: "what does
    # look up the old news" alone, "what is look up the libraries" interleaved with another recogniser).
    # Word error rates with ours are within run-to-run spread of pocketsphinx's (benchmarks/asr_wer.py).
    dither: bool = True
    seed: int = 1  # of this recogniser's own dither generator
    partial_interval_s: float = 0.2
    # Shifts between utterances measured on spoken questions: 7-9 for a session's first three, then 2-6.
    redecode_cmn_shift: float = 6.0  # inf: never decode twice
    redecode_max_s: float = 15.0  # utterances are kept (preallocated) up to this long for the second pass
    extra: dict[str, float | int | str | bool] = field(default_factory=dict)


@dataclass
class RecognizerStats:
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0  # time spent inside pocketsphinx (push + finish)
    finish_seconds: float = 0.0  # time of the last finish() alone: what is left at end of turn
    redecodes: int = 0  # utterances decoded a second time after a large CMN shift

    @property
    def real_time_factor(self) -> float:
        return self.compute_seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0


class StreamingRecognizer:
    """One utterance at a time: `push` audio (16 kHz mono), read `partial`, `finish` for the final text."""

    def __init__(self, config: RecognizerConfig | None = None) -> None:
        try:
            from pocketsphinx import Config, Decoder
        except ImportError:
            raise ASRError("pocketsphinx is not installed: `pip install pocketsphinx`") from None
        self.config = config or RecognizerConfig()
        c = self.config
        options: dict[str, float | int | str | bool] = {"loglevel": "FATAL", "dither": False}
        if c.lm is not None:
            options["lm"] = c.lm
        if c.dictionary is not None:
            options["dict"] = c.dictionary
        if c.language_weight is not None:
            options["lw"] = c.language_weight
        options.update(c.extra)
        try:
            self._decoder = Decoder(Config(**options))
        except (RuntimeError, ValueError, KeyError) as e:
            raise ASRError(f"pocketsphinx refused the configuration {options}: {e}") from e
        self._in_utterance = False
        self._since_partial = 0
        self._partial = ""
        self._audio = np.zeros(int(c.redecode_max_s * SAMPLE_RATE), np.int16)  # this utterance, for a 2nd pass
        self._audio_len = 0
        self._cmn_at_start = self._cmn()
        self._dither = np.random.default_rng(c.seed) if c.dither else None
        self.stats = RecognizerStats()

    def _cmn(self) -> np.ndarray:
        return np.array([float(v) for v in self._decoder.get_cmn(False).split(",")])

    @property
    def cmn(self) -> str:
        """The current cepstral mean (comma-separated), e.g. to start another recogniser from it."""
        return str(self._decoder.get_cmn(False))

    def set_cmn(self, cmn: str) -> None:
        """Start from this cepstral mean (from another recogniser on the same kind of input) instead of
        pocketsphinx's generic initial one; only between utterances."""
        if self._in_utterance:
            raise ASRError("set_cmn() inside an utterance; finish() it first")
        try:
            self._decoder.set_cmn(cmn)
        except (RuntimeError, ValueError) as e:
            raise ASRError(f"pocketsphinx refused the cepstral mean {cmn!r}: {e}") from e

    @property
    def in_utterance(self) -> bool:
        return self._in_utterance

    @property
    def partial(self) -> str:
        """The latest partial hypothesis of the current utterance ("" before any)."""
        return self._partial

    def push(self, pcm: np.ndarray) -> str | None:
        """Decode the next chunk [N] (float32 in [-1, 1] or int16, 16 kHz); starts an utterance if none is open.

        Returns the partial hypothesis when it was refreshed and changed, else None."""
        samples = _to_int16(pcm)
        if samples.size == 0:  # (pocketsphinx rejects an empty buffer)
            return None
        if self._dither is not None:  # (stored dithered: a second pass sees the same samples)
            noisy = samples.astype(np.int32) + (self._dither.integers(0, 4, samples.size) == 0)
            samples = np.minimum(noisy, 32767).astype(np.int16)
        t0 = time.perf_counter()
        if not self._in_utterance:
            self._decoder.start_utt()
            self._in_utterance = True
            self._since_partial = 0
            self._partial = ""
            self._audio_len = 0
            self._cmn_at_start = self._cmn()
        end = self._audio_len + samples.size
        if end <= self._audio.size:
            self._audio[self._audio_len : end] = samples
        self._audio_len = end
        self._decoder.process_raw(samples.tobytes(), False, False)
        self._since_partial += samples.size
        changed = None
        if self._since_partial >= self.config.partial_interval_s * SAMPLE_RATE:
            self._since_partial = 0
            hyp = self._decoder.hyp()
            text = _clean(hyp.hypstr if hyp is not None else "")
            if text != self._partial:
                self._partial = changed = text
        self.stats.audio_seconds += samples.size / SAMPLE_RATE
        self.stats.compute_seconds += time.perf_counter() - t0
        return changed

    def finish(self) -> str:
        """End the utterance; the final hypothesis ("" if nothing was pushed or nothing was recognised)."""
        if not self._in_utterance:
            return ""
        t0 = time.perf_counter()
        self._decoder.end_utt()
        self._in_utterance = False
        shift = float(np.linalg.norm(self._cmn() - self._cmn_at_start))
        if shift > self.config.redecode_cmn_shift and self._audio_len <= self._audio.size:
            self._decoder.start_utt()
            self._decoder.process_raw(self._audio[: self._audio_len].tobytes(), False, False)
            self._decoder.end_utt()
            self.stats.redecodes += 1
        hyp = self._decoder.hyp()
        elapsed = time.perf_counter() - t0
        self.stats.compute_seconds += elapsed
        self.stats.finish_seconds = elapsed
        self._partial = ""
        return _clean(hyp.hypstr if hyp is not None else "")

    def resume(self) -> bool:
        """Reopen the utterance the last `finish` closed, as if it had not been finished (the speaker paused,
        then went on): its audio is decoded again and the next `push` continues it, so the whole turn is
        recognised as one utterance, with the LM's context across the pause. Costs one pass over the audio
        so far (~0.1 x its duration), while the speaker is talking. False, and nothing done, when there is
        no closed utterance or its audio was too long to keep (over `redecode_max_s`)."""
        if self._in_utterance or self._audio_len == 0 or self._audio_len > self._audio.size:
            return False
        t0 = time.perf_counter()
        self._decoder.start_utt()
        self._decoder.process_raw(self._audio[: self._audio_len].tobytes(), False, False)
        self._in_utterance = True
        self._since_partial = 0
        self.stats.compute_seconds += time.perf_counter() - t0
        return True

    def recognize(self, pcm: np.ndarray, chunk: int = 1600) -> str:
        """A whole utterance [N] at 16 kHz, pushed in `chunk`-sample pieces as a stream would be."""
        if self._in_utterance:
            raise ASRError("recognize() called inside an open utterance; finish() it first")
        for start in range(0, max(1, pcm.size), chunk):
            self.push(pcm[start : start + chunk])
        return self.finish()


def _to_int16(pcm: np.ndarray) -> np.ndarray:
    if pcm.ndim != 1:
        raise ValueError(f"expected mono 16 kHz samples [N], got shape {pcm.shape}")
    return pcm if pcm.dtype == np.int16 else to_int16(to_float32(pcm))


def _clean(text: str) -> str:
    """pocketsphinx marks alternate pronunciations as "word(2)" and fillers as "<sil>" or "[noise]"."""
    words = [w.split("(")[0] for w in text.split() if not (w.startswith("<") or w.startswith("["))]
    return " ".join(words)
