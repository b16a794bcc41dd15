"""`omni chat --model DIR` on a Qwen3-Omni checkpoint (the tiny one of tests/model/qwen3_tiny.py): the family is
detected from config.json and the replies are the Thinker session's (whose greedy replies equal transformers'
generate, tests/model/test_qwen3_thinker.py). The tiny vocabulary is bytes, so replies are mostly invalid UTF-8:
the chat prints the text as it streams."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from model.lm.sampling import SamplingConfig
from model.qwen3.loader import load_qwen3
from model.qwen3.session import Qwen3ThinkerSession
from model.thinker_session import ReplyRecord, TokenText

pytest.importorskip("transformers")  # the fixture checkpoint is built with it
ROOT = Path(__file__).resolve().parents[2]
N = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model.qwen3_tiny import save_tiny_qwen3

    return save_tiny_qwen3(tmp_path_factory.mktemp("qwen3_chat") / "ckpt")[1]


def _expected(checkpoint: Path, turns: list[str], audio: np.ndarray | None = None,
              image: np.ndarray | None = None) -> str:
    q = load_qwen3(checkpoint)
    s = Qwen3ThinkerSession(q.model, q.prompt, tokenizer=q.tokenizer)
    out = []
    for i, text in enumerate(turns):
        s.start_user_turn()
        if i == 0 and image is not None:
            s.add_image(*q.model.image_input(torch.from_numpy(image).float(), q.vision_preprocess))
        if i == 0 and audio is not None:
            s.add_audio(torch.from_numpy(audio))
        s.add_text(text)
        s.end_user_turn()
        events = list(s.respond(SamplingConfig(max_new_tokens=N, repetition_penalty=1.1)))
        assert isinstance(events[-1], ReplyRecord) and events[-1].token_ids
        out.append("".join(e.text for e in events if isinstance(e, TokenText)))  # what streams to the screen
    return "".join(t + "\n" for t in out)


def test_piped_turns_print_the_replies_only(checkpoint: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "app.cli", "chat", "--model", str(checkpoint), "--max-new-tokens",
                        str(N)], input="hello there\n\nand again\n", capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout == _expected(checkpoint, ["hello there", "and again"])


def test_audio_and_image_join_the_first_turn(checkpoint: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    audio = tmp_path / "q.wav"
    pcm = (0.2 * np.sin(np.arange(30000) * 2 * np.pi * 330 / 16000) * 32767).astype("<i2")
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    image = tmp_path / "i.ppm"
    image.write_bytes(b"P6 64 48 255\n" + rgb.tobytes())
    args = ["chat", "--model", str(checkpoint), "--prompt", "what is this", "--max-new-tokens", str(N)]
    assert main([*args, "--audio", str(audio), "--image", str(image)]) == 0
    from streaming.media_files import read_audio

    assert capsys.readouterr().out == _expected(checkpoint, ["what is this"], read_audio(audio), rgb)


def test_unsupported_flags_are_refused(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--model", str(checkpoint), "--prompt", "hi", "--speak", str(tmp_path / "o.wav")]) == 1
    assert "not supported for Qwen3-Omni" in capsys.readouterr().err
