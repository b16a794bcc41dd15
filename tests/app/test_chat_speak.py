"""`omni chat --model DIR --speak out.wav` on a tiny random Qwen2.5-Omni checkpoint with a voice table."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest
import torch

from app.cli import main
from model.voices import Voice, VoiceBank
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
