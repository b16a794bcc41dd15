"""The whole Qwen3-Omni speech chain against transformers' own `generate(..., return_audio=True)` on the tiny
released-layout checkpoint: our `Qwen3VoiceSession` (our Thinker, its taps into our Talker, our streaming
Code2Wav) and `Qwen3OmniMoeForConditionalGeneration.generate` get the same prompt (an earlier exchange, then
a user turn with audio and text) and must give the same reply tokens, the same codes in every codebook
of every frame and the same waveform.

Sampling is off on both sides: the Thinker greedy (`thinker_do_sample=False`), the Talker greedy
(`talker_do_sample=False`, which transformers mirrors onto its code predictor) with the reference's repetition
penalty 1.05 kept on both sides. transformers' Thinker runs `thinker_max_new_tokens` = N with no stop token, and
the last token it makes is never fed back, so its Talker hears N - 1 tokens then tts_eos: our session is asked
for N - 1 tokens (it feeds every token it makes to the Talker), and the N - 1 tokens must equal the first N - 1
of the reference.

Code2Wav runs in float64 on both sides (the reference's module cast with `.double()`; float32 Code2Wav differs by
~1e-3 relative from rounding, see tests/model/test_code2wav.py), the Thinker and Talker in float32 like the parity
tests. The reference returns its waveform as float32, so the tolerance is float32 rounding: 1e-5 of the peak.
The tiny checkpoint's Code2Wav output is almost all clamped at +-1, which would hide differences: both sides get
the same test-side change, the last conv's weights and bias scaled by `QUIET`, so most samples are inside.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from omni.model.conversation import ReplyRecord
from omni.model.lm.sampling import SamplingConfig
from omni.model.qwen3.loader import LoadedQwen3, load_qwen3
from omni.model.qwen3.speech import Qwen3SpeechModels, Qwen3SpeechSettings, load_qwen3_speech
from omni.model.qwen3.talker import GREEDY
from omni.model.qwen3.voice_session import Qwen3VoiceSession
from omni.model.token2wav.streaming import PCMChunk

transformers = pytest.importorskip("transformers")

N = 7  # reference Thinker tokens; ours makes N - 1 (see the module docstring)
FRAMES = 10  # Talker steps: more than the text, so the tts_eos and tts_pad slots are covered
SPEAKER = "aiden"
QUIET = 0.02  # the last Code2Wav conv's scale on both sides (see the module docstring)


def _quiet(code2wav: torch.nn.Module) -> None:
    last = f"decoder.{len(code2wav.decoder) - 1}."  # type: ignore[arg-type]
    with torch.no_grad():
        for name, p in code2wav.named_parameters():
            if name.startswith(last):
                p.mul_(QUIET)


@pytest.fixture(scope="module")
def reference(qwen3_tiny_dir: Path) -> Any:
    from transformers import Qwen3OmniMoeForConditionalGeneration

    model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(qwen3_tiny_dir, dtype=torch.float32).eval()
    model.code2wav.double()
    _quiet(model.code2wav)
    return model


@pytest.fixture(scope="module")
def ours(qwen3_tiny_dir: Path) -> tuple[LoadedQwen3, Qwen3SpeechModels]:
    q = load_qwen3(qwen3_tiny_dir, dtype=torch.float32)
    speech = load_qwen3_speech(qwen3_tiny_dir, torch.float32, index=q.index, code2wav_dtype=torch.float64)
    _quiet(speech.code2wav)
    return q, speech


def _pcm(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    return 0.3 * torch.sin(2 * torch.pi * 300 * t * (1 + t)) + 0.05 * torch.randn(t.shape, generator=g)


def _run_reference(model: Any, ids: list[int], mel: torch.Tensor
                   ) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reply tokens, codes [frames, Q], codebook-0 logits [steps, V], waveform) of transformers' generate with
    return_audio=True."""
    captured: dict[str, Any] = {}
    talker_generate = model.talker.generate

    def capture(*a: Any, **k: Any) -> Any:
        captured["talker"] = talker_generate(*a, **k)
        return captured["talker"]

    with mock.patch.object(model.talker, "generate", capture), torch.no_grad():
        sequences, wav = model.generate(
            input_ids=torch.tensor([ids]), input_features=mel[None],
            feature_attention_mask=torch.ones(1, mel.shape[1], dtype=torch.long), return_audio=True,
            speaker=SPEAKER, thinker_max_new_tokens=N, thinker_eos_token_id=None, thinker_do_sample=False,
            talker_max_new_tokens=FRAMES, talker_do_sample=False, talker_output_logits=True)
    talker = captured["talker"]
    codes = torch.stack([h[-1] for h in talker.hidden_states if h[-1] is not None], dim=1)[0]  # [frames, Q]
    return sequences[0, len(ids) :].tolist(), codes, torch.cat(list(talker.logits)), wav.reshape(-1).double()


def _run_ours(q: LoadedQwen3, speech: Qwen3SpeechModels, mel_pcm: torch.Tensor
              ) -> tuple[list[int], list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the prompt our session fed, reply tokens, codes [frames, Q], codebook-0 logits [steps, V] (raw, before
    the suppression of specials, as the reference reports them), the streamed waveform)."""
    talker_sampling = dataclasses.replace(GREEDY, repetition_penalty=1.05, max_new_tokens=FRAMES)
    settings = Qwen3SpeechSettings(speaker=SPEAKER, sampling=talker_sampling, predictor_sampling=GREEDY)
    s = Qwen3VoiceSession(q.model, q.prompt, q.tokenizer, speech, settings)
    # an earlier exchange fed as history (its assistant turn is not the Talker's input)
    s.feed_ids(q.prompt.turn_start("user") + q.prompt.text("hello") + q.prompt.generation_prompt()
               + q.prompt.text("hi!") + q.prompt.turn_end())
    before = s.prefilled_tokens
    s.start_user_turn()
    n_audio = s.add_audio(mel_pcm)
    s.add_text("Tell me a story")
    s.end_user_turn()
    p = q.prompt
    ids = (p.turn_start("user") + p.text("hello") + p.generation_prompt()
           + p.text("hi!") + p.turn_end() + p.turn_start("user") + p.audio(n_audio) + p.text("Tell me a story")
           + p.generation_prompt())
    assert s.prefilled_tokens == len(ids) and s.prefilled_tokens > before
    logits: list[torch.Tensor] = []
    choose = speech.talker.choose_first

    def record(state: Any, raw: torch.Tensor) -> int:
        logits.append(raw)
        return choose(state, raw)

    with mock.patch.object(speech.talker, "choose_first", record):
        events = list(s.respond(SamplingConfig(temperature=0.0, max_new_tokens=N - 1), stop_ids=frozenset()))
    record = events[-1]
    assert isinstance(record, ReplyRecord)
    chunks = [e for e in events if isinstance(e, PCMChunk)]
    assert [c.start for c in chunks] == [sum(c.samples.numel() for c in chunks[:i]) for i in range(len(chunks))]
    wav = torch.cat([c.samples.reshape(-1) for c in chunks]).double()
    frames = torch.stack(s.speech.frames)
    assert record.codes == frames[:, 0].tolist()
    return ids, record.token_ids, frames, torch.cat(logits), wav


def test_voice_session_equals_transformers_generate_with_audio(
    reference: Any, ours: tuple[LoadedQwen3, Qwen3SpeechModels]
) -> None:
    q, speech = ours
    pcm = _pcm(2.6, 7)
    mel = q.model.audio_features(pcm, 16000)
    ids, tokens, frames, logits, wav = _run_ours(q, speech, pcm)
    want_tokens, want_codes, want_logits, want_wav = _run_reference(reference, ids, mel)

    assert len(tokens) == N - 1 and tokens == want_tokens[: N - 1]
    # (the tiny random Thinker soon repeats one token; the prompt is one whose reply starts with another)
    assert len(set(tokens)) > 1, "weak test: the Thinker repeats one token"

    assert logits.shape == want_logits.shape == (FRAMES, speech.talker_config.codec_vocab_size)
    scale = want_logits.abs().max().item()
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4 * scale)
    # the reference's last step (at its frame limit) has no residual codes: it returns one frame fewer
    n = want_codes.shape[0]
    assert n >= FRAMES - 1 and frames.shape == (FRAMES, 4)
    assert torch.equal(frames[:n], want_codes)
    assert len(set(frames[:, 1:].flatten().tolist())) > 3, "weak test: the code predictor repeats one code"

    # Code2Wav is prefix-causal: decoding n frames gives the first n * 1920 - 555 samples of decoding more
    assert want_wav.shape == (n * 1920 - 555,) and wav.shape == (FRAMES * 1920 - 555,)
    peak = want_wav.abs().max().item()
    assert peak > 1e-3, "weak test: the reference waveform is silent"
    assert (want_wav.abs() < 0.99).double().mean() > 0.5, "weak test: the waveform is mostly clipped at +-1"
    assert (wav[: want_wav.shape[0]] - want_wav).abs().max().item() < 1e-5 * peak
