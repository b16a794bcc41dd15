"""Streaming recognition of spoken questions (espeak-ng at test time, two voices), scored by word error rate.

Measured on this machine (pooled over the two voices of `spoken.VOICES`, a recogniser shared by the turns
as in a session): conversational LM, in-domain questions 0.05-0.22, held-out questions 0.35-0.41; general
en-us LM on the in-domain questions 0.68-0.76. espeak-ng varies its timing slightly from run to run, which
moves single words; the bounds leave about one wrong word in four sentences of margin over the worst run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.spoken import HELD_OUT, IN_DOMAIN, VOICES, spoken
from omni.model.embedded.asr import ASRError, RecognizerConfig, StreamingRecognizer
from omni.model.embedded.conversation_lm import conversation_lm_path, conversation_sentences
from omni.model.embedded.wer import corpus_wer


@pytest.fixture(scope="module")
def conversation() -> RecognizerConfig:
    return RecognizerConfig(lm=str(conversation_lm_path()))


def transcribe_all(config: RecognizerConfig, questions: tuple[str, ...], voices: tuple = VOICES) -> float:
    r = StreamingRecognizer(config)
    pairs = [(q, r.recognize(spoken(q, v), chunk=320)) for v in voices for q in questions]  # 20 ms chunks
    return corpus_wer(pairs)


def test_in_domain_questions(conversation: RecognizerConfig) -> None:
    assert transcribe_all(conversation, IN_DOMAIN) <= 0.35


def test_held_out_questions(conversation: RecognizerConfig) -> None:
    assert not set(q.lower().strip("?.") for q in HELD_OUT) & set(conversation_sentences())
    assert transcribe_all(conversation, HELD_OUT) <= 0.5


def test_conversational_lm_beats_the_general_lm(conversation: RecognizerConfig) -> None:
    general = transcribe_all(RecognizerConfig(), IN_DOMAIN, VOICES[:1])
    ours = transcribe_all(conversation, IN_DOMAIN, VOICES[:1])
    assert ours < general - 0.2


def test_france_question_on_a_fresh_recogniser(conversation: RecognizerConfig) -> None:
    """The first turn of a session, before the cepstral mean has adapted (the second pass covers it)."""
    for voice in VOICES[:1]:
        r = StreamingRecognizer(conversation)
        text = r.recognize(spoken("What is the capital of France?", voice), chunk=320)
        assert "capital" in text and "france" in text
        assert r.stats.redecodes == 1


def test_conversation_lm_is_built_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI_CACHE_DIR", str(tmp_path))
    path = conversation_lm_path()
    assert path.parent == tmp_path and path.read_text().count("\\data\\") == 1
    stamp = path.stat().st_mtime_ns
    assert conversation_lm_path() == path and path.stat().st_mtime_ns == stamp
    unigrams = {line.split()[1] for line in path.read_text().split("\\1-grams:")[1].split("\\2-grams:")[0].splitlines()
                if line.strip()}  # fmt: skip
    assert {"capital", "france"} <= unigrams  # from the templates
    assert {"elephants", "penguins", "airplanes"} <= unigrams  # from the general LM only
    assert "elephants" not in " ".join(conversation_sentences())
    assert list(tmp_path.iterdir()) == [path]


def test_partials_arrive_while_speaking_and_chunking_does_not_matter(conversation: RecognizerConfig) -> None:
    audio = spoken("Who wrote Romeo and Juliet?")
    r = StreamingRecognizer(conversation)
    partials = [p for start in range(0, audio.size, 320) if (p := r.push(audio[start : start + 320]))]
    final = r.finish()
    assert len(partials) >= 2
    assert set(partials[-1].split()) & set(final.split())  # most of the words were known before the end
    assert not r.in_utterance and r.partial == ""
    for chunk in (160, 4000, audio.size):
        again = StreamingRecognizer(conversation)
        assert again.recognize(audio, chunk=chunk) == final


def test_recognisers_side_by_side_hear_what_they_hear_alone() -> None:
    """Sessions run their recognisers interleaved on one thread; one must not change another's transcript
    (pocketsphinx's own dither generator is shared by the process; ours is per recogniser)."""
    a = spoken("What is the capital of France?", VOICES[0])
    b = spoken("Tell me a fact about dogs.", VOICES[1])
    alone = [StreamingRecognizer().recognize(x, chunk=320) for x in (a, b)]
    r1, r2 = StreamingRecognizer(), StreamingRecognizer()
    for i in range(0, max(a.size, b.size), 320):
        r1.push(a[i : i + 320])  # (empty once a clip is over: an empty push is allowed and changes nothing)
        r2.push(b[i : i + 320])
    assert [r1.finish(), r2.finish()] == alone


def test_int16_and_float_input_agree(conversation: RecognizerConfig) -> None:
    audio = spoken("Tell me about the moon.")
    as_int16 = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    assert StreamingRecognizer(conversation).recognize(audio) == StreamingRecognizer(conversation).recognize(as_int16)


def test_silence_and_nothing(conversation: RecognizerConfig) -> None:
    r = StreamingRecognizer(conversation)
    assert r.finish() == ""  # no utterance open
    assert r.recognize(np.zeros(16000, np.float32)) == ""
    assert r.stats.audio_seconds == pytest.approx(1.0)


def test_errors(conversation: RecognizerConfig) -> None:
    r = StreamingRecognizer(conversation)
    with pytest.raises(ValueError, match="mono"):
        r.push(np.zeros((2, 320), np.float32))
    with pytest.raises(ValueError, match="int16"):
        r.push(np.zeros(320, np.int32))
    r.push(np.zeros(320, np.float32))
    with pytest.raises(ASRError, match="open utterance"):
        r.recognize(np.zeros(320, np.float32))
    with pytest.raises(ASRError, match="refused"):
        StreamingRecognizer(RecognizerConfig(lm="/no/such/file.arpa"))
