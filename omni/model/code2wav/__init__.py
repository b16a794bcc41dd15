"""Qwen3-Omni Code2Wav: multi-codebook codec frames -> 24 kHz speech, streamed exactly from the first frame."""

from omni.model.code2wav.config import Code2WavConfig
from omni.model.code2wav.model import Code2Wav, Code2WavState
from omni.model.code2wav.streaming import Code2WavStreamState, StreamingCode2Wav
from omni.model.code2wav.weights import load_code2wav
from omni.model.token2wav import SAMPLE_RATE  # both speech decoders output 24 kHz

__all__ = [
    "SAMPLE_RATE",
    "Code2Wav",
    "Code2WavConfig",
    "Code2WavState",
    "Code2WavStreamState",
    "StreamingCode2Wav",
    "load_code2wav",
]
