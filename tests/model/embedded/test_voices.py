"""The fixed voice list: only its names are accepted, each loads once."""

from __future__ import annotations

import pytest

from omni.model.embedded.piper import PiperSynthesizer
from omni.model.embedded.tts import Synthesizer
from omni.model.embedded.voices import DEFAULT_VOICE, VOICES, VoiceError, VoiceRegistry


@pytest.mark.parametrize(
    "name",
    ["", "Joe", "en-us", "en-us+f3", "alloy", "../../../etc/passwd", "/tmp/voice.onnx", "joe/../joe", "joe\x00", None],
)
def test_unknown_names_are_refused(name: object) -> None:
    with pytest.raises(VoiceError, match="unknown voice .* choose one of espeak, espeak-british"):
        VoiceRegistry().synthesizer(name)  # type: ignore[arg-type]


def test_each_voice_loads_once_and_speaks() -> None:
    registry = VoiceRegistry(piper_threads=1)
    assert DEFAULT_VOICE in VOICES
    espeak = registry.synthesizer("espeak-british")
    assert isinstance(espeak, Synthesizer) and espeak.voice.name == "en-gb-x-rp"
    joe = registry.synthesizer("joe")
    assert isinstance(joe, PiperSynthesizer) and registry.synthesizer("joe") is joe
    for name in VOICES:
        speech = registry.synthesizer(name).synth_int16("Hello.")
        assert speech.size > 0.2 * registry.synthesizer(name).sample_rate
