"""`omni serve --llm` and `--voice` for the embedded engine: the user's language model behind the same ears
and voice, and a voice from the fixed list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.spoken import spoken
from omni.app.cli import build_parser
from omni.app.serve import make_engine
from omni.model.embedded.voices import VOICES, VoiceError
from omni.streaming.engine import AudioChunk, ReplyDone, TextDelta, TranscriptDelta
from omni.streaming.engines.embedded import EmbeddedEngine, as_sentence
from tests.model.omni_tiny import VOCAB, write_tokenizer
from tests.model.tiny_hf import make_tiny_hf
from tests.streaming.test_embedded_engine import FRANCE, FRANCE_VOICE


def test_help_lists_the_voices() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.llm is None and args.voice is None  # the packaged LM and joe unless asked
    r = subprocess.run([sys.executable, "-m", "omni.app.cli", "serve", "--help"], capture_output=True, text=True,
                       timeout=60)
    flat = " ".join(r.stdout.split())
    assert r.returncode == 0 and "--llm FILE_OR_DIR" in flat
    assert all(name in flat for name in VOICES) and "(default joe" in flat


def test_llm_flag_replaces_the_packaged_lm(tmp_path: Path) -> None:
    """A tiny random Qwen2 decoder saved by transformers, with a byte-level tokenizer and a chat template,
    answers instead of SmolLM2; Whisper still hears the question and the default voice speaks the reply."""
    _, directory = make_tiny_hf(tmp_path, "qwen2", vocab_size=VOCAB)
    write_tokenizer(directory)
    engine = make_engine("embedded", llm=str(directory))
    assert isinstance(engine, EmbeddedEngine)
    assert engine.lm.model.cfg.vocab_size == VOCAB and engine.lm.model.cfg.num_layers == 3
    session = engine.open_session()
    audio = spoken(FRANCE, FRANCE_VOICE)
    for start in range(0, audio.size, 320):
        session.push_audio(audio[start : start + 320], start / 16000)
    final = session.end_turn()[-1]
    assert isinstance(final, TranscriptDelta) and "capital" in final.text.lower()
    events = list(session.respond())
    done = events[-1]
    assert isinstance(done, ReplyDone) and done.stats["new_tokens"] > 0
    assert session.chat.messages[-2]["content"] == as_sentence(final.text)  # asked what was heard
    spoken_text = "".join(e.text for e in events if isinstance(e, AudioChunk))
    assert spoken_text == "".join(e.text for e in events if isinstance(e, TextDelta))  # all of it, in order


def test_bad_llm_voice_and_engine_combinations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--llm is for --engine embedded"):
        make_engine("test", llm=str(tmp_path))
    with pytest.raises(ValueError, match="--voice is for --engine embedded or omni"):
        make_engine("tiny", voice="joe")
    with pytest.raises(VoiceError, match="unknown voice 'en-us'"):
        make_engine("embedded", voice="en-us")  # refused before any model is loaded
    missing = tmp_path / "nothing.gguf"
    r = subprocess.run(
        [sys.executable, "-m", "omni.app.cli", "serve", "--llm", str(missing)], capture_output=True, text=True,
        timeout=120,
    )
    assert r.returncode == 1 and f"{missing}: no such file or directory" in r.stderr
