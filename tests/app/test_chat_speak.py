"""`omni chat --model DIR` (with --speak out.wav, --audio, --image) on a tiny random Qwen2.5-Omni checkpoint with
a voice table."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from omni.app.cli import main
from omni.model.lm.sampling import SamplingConfig
from omni.model.voices import Voice, VoiceBank
from omni.streaming.engine import ReplyDone
from omni.streaming.engines.omni import OmniEngine
from omni.streaming.media_files import read_audio, read_image
from tests.model.omni_tiny import IDS, save_tiny_omni


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, d = save_tiny_omni(tmp_path_factory.mktemp("speak") / "ckpt")
    g = torch.Generator().manual_seed(0)
    voice = Voice("Chelsie", IDS["spk_bos"], torch.randn(1, 16, generator=g), torch.randn(1, 60, 80, generator=g) - 4)
    VoiceBank({"Chelsie": voice}).save(Path(d) / "spk_dict.pt")
    return Path(d)


def test_speak_writes_the_spoken_reply(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reply.wav"
    code = main(
        [
            "chat",
            "--model",
            str(checkpoint),
            "--prompt",
            "hello",
            "--max-new-tokens",
            "4",
            "--seed",
            "0",
            "--speak",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip()  # the text reply
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        n = w.getnframes()
        pcm = torch.frombuffer(bytearray(w.readframes(n)), dtype=torch.int16)
    assert n > 0 and n % 480 == 0  # whole codec frames of 20 ms
    assert pcm.abs().max() > 0


def test_unknown_voice_lists_the_voices(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["chat", "--model", str(checkpoint), "--prompt", "hello", "--speak", str(tmp_path / "x.wav"), "--voice", "Bob"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "unknown voice 'Bob'" in err and "Chelsie" in err


def _ppm(path: Path, size: int = 56) -> Path:
    """A small RGB gradient as a binary PPM (av decodes it as an image)."""
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    path.write_bytes(f"P6 {size} {size} 255\n".encode() + rgb.tobytes())
    return path


def test_chat_answers_through_the_omni_engine(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    """The chat's first turn (an image, spoken audio, then the text) gives what the engine interface gives for
    the same input: the CLI is a client of the engine, not a second driver of the model."""
    audio = tmp_path / "q.wav"
    pcm = (0.2 * np.sin(np.arange(40000) * 2 * np.pi * 330 / 16000) * 32767).astype("<i2")
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    image = _ppm(tmp_path / "i.ppm")
    args = ["--prompt", "what is this", "--max-new-tokens", "5", "--seed", "0", "--audio", str(audio)]
    assert main(["chat", "--model", str(checkpoint), *args, "--image", str(image)]) == 0
    printed = capsys.readouterr().out

    engine = OmniEngine(
        checkpoint, speak=False, sampling=SamplingConfig(repetition_penalty=1.1, max_new_tokens=5, seed=0), seed=0
    )
    s = engine.open_session()
    s.push_media(read_image(image))
    s.push_audio(read_audio(audio), 0.0)
    s.push_text("what is this")
    done = list(s.respond())[-1]
    assert isinstance(done, ReplyDone)
    assert printed == done.text + "\n"
    assert [role for role, _ in s.history] == ["user", "user", "user", "assistant"]
