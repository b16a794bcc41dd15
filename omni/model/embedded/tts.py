"""Speech synthesis with espeak-ng, from the library and data inside the `espeakng-loader` wheel.

No system package: the wheel's libespeak-ng is opened with ctypes and initialised with the wheel's data
directory, in synchronous mode, so `espeak_Synth` returns only once the whole text is synthesised and the
samples (22,050 Hz int16 mono) arrive through the synth callback on the calling thread.

espeak-ng keeps one global state per process (voice, rate, callback), so every synthesis takes a lock and
sets its own voice and rate first: `Synthesizer` objects with different voices can be used from many threads.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni.model.pcm import to_float32

__all__ = ["ESPEAK_SAMPLE_RATE", "EspeakVoice", "Synthesizer", "TTSError", "list_voices"]

ESPEAK_SAMPLE_RATE = 22050

# espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE and flags from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0

# int callback(short *wav, int numsamples, espeak_EVENT *events); events are not used here.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class TTSError(RuntimeError):
    """espeak-ng could not be loaded, initialised, or refused a voice or a text."""


@dataclass(frozen=True)
class EspeakVoice:
    """An espeak-ng voice: `name` as espeak-ng takes it ("en-us", "en-us+f3", "en-gb-x-rp+m3"),
    `rate` in words per minute (80-450), `pitch` and `pitch_range` in 0-100."""

    name: str = "en-us"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50

    def __post_init__(self) -> None:
        if not 80 <= self.rate <= 450:
            raise ValueError(f"rate must be 80-450 words per minute, got {self.rate}")
        if not (0 <= self.pitch <= 100 and 0 <= self.pitch_range <= 100):
            raise ValueError(f"pitch and pitch_range must be 0-100, got {self.pitch}, {self.pitch_range}")


class _Library:
    """The process-wide espeak-ng instance (espeak-ng's own state is global)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise TTSError("espeakng-loader is not installed: `pip install espeakng-loader`") from None
        lib_path, data_path = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as e:
            raise TTSError(f"cannot load {lib_path}: {e}") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        # The data path is the directory that holds espeak-ng-data's files (phontab, voices/, ...).
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if rate != ESPEAK_SAMPLE_RATE:
            raise TTSError(f"espeak_Initialize with data {data_path} returned {rate}, expected {ESPEAK_SAMPLE_RATE}")
        self.lib = lib
        self.data_path = data_path
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        # Keep a reference to the ctypes callback for the life of the process: espeak-ng holds its address.
        self._callback = _SynthCallback(self._on_samples)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_samples(self, wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int | None) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: continue synthesis

    def synth(self, text: str, voice: EspeakVoice) -> np.ndarray:
        data = text.encode("utf-8")
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
                raise TTSError(f"espeak-ng has no voice {voice.name!r} (see list_voices())")
            for param, value in ((_RATE, voice.rate), (_PITCH, voice.pitch), (_RANGE, voice.pitch_range)):
                self.lib.espeak_SetParameter(param, value, 0)
            self._chunks = []
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            chunks, self._chunks = self._chunks, []
        if err != _EE_OK:
            raise TTSError(f"espeak_Synth failed with error {err} on {text[:40]!r}")
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


_library: _Library | None = None
_library_lock = threading.Lock()


def _get_library() -> _Library:
    global _library
    with _library_lock:
        if _library is None:
            _library = _Library()
        return _library


def list_voices() -> list[str]:
    """Voice names found in the wheel's data (languages under lang/, variants as "+name" suffixes)."""
    root = Path(_get_library().data_path)
    langs = sorted(p.name.lower() for p in (root / "lang").rglob("*") if p.is_file())
    variants = sorted(p.name for p in (root / "voices" / "!v").iterdir() if p.is_file())
    return langs + [f"en-us+{v}" for v in variants]


class Synthesizer:
    """Text to 22,050 Hz speech with one voice. Cheap to make; all share the process's espeak-ng."""

    sample_rate = ESPEAK_SAMPLE_RATE

    def __init__(self, voice: EspeakVoice | None = None) -> None:
        self.voice = voice or EspeakVoice()
        self._lib = _get_library()

    def synth_int16(self, text: str) -> np.ndarray:
        """Speech for `text` as int16 [N] at 22,050 Hz; empty for text with nothing to say."""
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        return self._lib.synth(text, self.voice)

    def synth(self, text: str) -> np.ndarray:
        """Speech for `text` as float32 [N] in [-1, 1] at 22,050 Hz."""
        return to_float32(self.synth_int16(text))
