"""`omni chat --model DIR` on a Qwen3-Omni checkpoint (the tiny one of tests/model/qwen3_tiny.py): the family is
detected from config.json and the chat is a client of the omni engine, as for Qwen2.5-Omni, so every test
compares what the chat prints (and, with --speak, writes) with what the engine interface gives for the same
input. (The engine's Qwen3 session is checked against transformers in tests/model/test_qwen3_chain.py and
tests/streaming/test_qwen3_engine.py.) The tiny vocabulary is bytes, so replies are mostly invalid UTF-8: the
chat prints the text as it streams."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from omni.app.cli import main
from omni.model.lm.sampling import SamplingConfig
from omni.streaming.engine import Attachment, AudioChunk, ReplyDone, TextDelta
from omni.streaming.engines.omni import OmniEngine
from omni.streaming.media_files import read_audio, read_image, read_video

pytest.importorskip("transformers")  # the fixture checkpoint is built with it
ROOT = Path(__file__).resolve().parents[2]
N = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model.qwen3_tiny import save_tiny_qwen3

    return save_tiny_qwen3(tmp_path_factory.mktemp("qwen3_chat") / "ckpt")[1]


def _engine_replies(checkpoint: Path, turns: list[str], media: list[Attachment] = (),  # type: ignore[assignment]
                    audio: np.ndarray | None = None, speak: bool = False, voice: str | None = None,
                    seed: int | None = None) -> tuple[str, np.ndarray]:
    """What the chat should print for `turns` (media and audio join the first, in the chat's order), and the
    spoken PCM of every reply in turn, through the engine interface."""
    engine = OmniEngine(checkpoint, speak=speak, voice=voice, seed=seed,
                        sampling=SamplingConfig(repetition_penalty=1.1, max_new_tokens=N, seed=seed))
    s = engine.open_session()
    printed, pcm = "", []
    for i, text in enumerate(turns):
        if i == 0:
            for m in media:
                s.push_media(m)
            if audio is not None:
                s.push_audio(audio, 0.0)
        s.push_text(text)
        events = list(s.respond())
        assert isinstance(events[-1], ReplyDone) and events[-1].stats["new_tokens"] > 0
        printed += "".join(e.text for e in events if isinstance(e, TextDelta)) + "\n"
        pcm += [e.pcm for e in events if isinstance(e, AudioChunk)]
    return printed, np.concatenate(pcm) if pcm else np.zeros(0, np.float32)


def _wav(path: Path, seconds: float = 1.9) -> Path:
    pcm = (0.2 * np.sin(np.arange(int(16000 * seconds)) * 2 * np.pi * 330 / 16000) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return path


def _video(path: Path, seconds: float = 2.0, fps: int = 10, with_audio: bool = True) -> Path:
    """A small moving gradient (64 x 48) with, optionally, a tone as its soundtrack (16 kHz PCM in Matroska)."""
    import av

    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=16000, layout="mono") if with_audio else None
        y, x = np.mgrid[0:48, 0:64]
        for i in range(int(seconds * fps)):
            rgb = np.stack([x * 4 + i * 8, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            t = np.arange(int(16000 * seconds)) / 16000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")[None]
            frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
            frame.sample_rate = 16000
            for p in a.encode(frame):
                c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return path


def test_piped_turns_print_the_replies_only(checkpoint: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "omni.app.cli", "chat", "--model", str(checkpoint), "--max-new-tokens",
                        str(N)], input="hello there\n\nand again\n", capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout == _engine_replies(checkpoint, ["hello there", "and again"])[0]


def test_audio_and_image_join_the_first_turn(checkpoint: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    audio = _wav(tmp_path / "q.wav")
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    image = tmp_path / "i.ppm"
    image.write_bytes(b"P6 64 48 255\n" + rgb.tobytes())
    args = ["chat", "--model", str(checkpoint), "--prompt", "what is this", "--max-new-tokens", str(N)]
    assert main([*args, "--audio", str(audio), "--image", str(image)]) == 0
    want = _engine_replies(checkpoint, ["what is this"], [read_image(image)], read_audio(audio))[0]
    assert capsys.readouterr().out == want


def test_speak_writes_the_spoken_reply(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Talker samples (the reference's settings): with a seed the WAV is the engine's PCM, sample for sample."""
    out = tmp_path / "reply.wav"
    args = ["chat", "--model", str(checkpoint), "--prompt", "hello", "--max-new-tokens", str(N), "--seed", "0"]
    assert main([*args, "--speak", str(out), "--voice", "Ethan"]) == 0
    printed = capsys.readouterr().out
    text, pcm = _engine_replies(checkpoint, ["hello"], speak=True, voice="ethan", seed=0)
    assert printed == text
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        n = w.getnframes()
        written = np.frombuffer(w.readframes(n), dtype="<i2")
    assert n > 0 and n % 1920 == 1920 - 555  # whole 80-ms codec frames, less the causal decoder's trim
    assert np.abs(written).max() > 0
    assert np.array_equal(written, (np.clip(pcm, -1, 1) * 32767).round().astype("<i2"))


def test_speak_with_an_unknown_voice_lists_the_speakers(checkpoint: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = ["chat", "--model", str(checkpoint), "--prompt", "hi", "--speak", str(tmp_path / "o.wav")]
    assert main([*args, "--voice", "nobody"]) == 1
    err = capsys.readouterr().err
    assert "nobody" in err and "chelsie" in err


def test_video_joins_the_first_turn(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = _video(tmp_path / "clip.mkv")
    args = ["chat", "--model", str(checkpoint), "--prompt", "what happens", "--max-new-tokens", str(N)]
    assert main([*args, "--video", str(clip)]) == 0
    video = read_video(clip)
    assert len(video.frames) == 20 and video.audio is None
    assert capsys.readouterr().out == _engine_replies(checkpoint, ["what happens"], [video])[0]


def test_video_with_its_soundtrack(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--audio-in-video gives what the engine gives for the clip with its audio; while the engine does not read a
    Qwen3 clip's soundtrack, the chat refuses with the engine's message (exit 1, no traceback)."""
    clip = _video(tmp_path / "clip.mkv")
    video = read_video(clip, with_audio=True)
    assert video.audio is not None and abs(video.audio.shape[0] - 32000) < 1600
    args = ["chat", "--model", str(checkpoint), "--prompt", "what happens", "--max-new-tokens", str(N)]
    code = main([*args, "--video", str(clip), "--audio-in-video"])
    out, err = capsys.readouterr()
    try:
        want = _engine_replies(checkpoint, ["what happens"], [video])[0]
    except ValueError as e:
        assert "soundtrack" in str(e)
        assert code == 1 and str(e) in err and "Traceback" not in err
        return
    assert code == 0, err
    assert out == want


def test_quant_is_passed_to_the_engine(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["chat", "--model", str(checkpoint), "--prompt", "hello", "--max-new-tokens", str(N)]
    assert main([*args, "--quant", "int8"]) == 0
    engine = OmniEngine(checkpoint, speak=False, quant="int8",
                        sampling=SamplingConfig(repetition_penalty=1.1, max_new_tokens=N))
    from omni.model.layers.quant_linear import QuantExperts
    from omni.model.qwen3.loader import LoadedQwen3

    assert isinstance(engine.thinker, LoadedQwen3)
    assert isinstance(engine.thinker.model.lm.layers[0].mlp.experts, QuantExperts)  # type: ignore[union-attr]
    s = engine.open_session()
    s.push_text("hello")
    done = list(s.respond())[-1]
    assert isinstance(done, ReplyDone)
    assert capsys.readouterr().out == done.text + "\n"
