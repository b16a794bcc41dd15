"""Talker parity with transformers' Qwen2_5OmniTalkerForConditionalGeneration, given the inputs
Qwen2_5OmniForConditionalGeneration.generate builds (speaker start token, codec pad/start on the last two
prompt slots, reply slots then text end then text pad); ours is fed one Thinker token at a time.

Compared: the raw logits of every step (float32; 1e-4 relative bounds float32 rounding through two layers
with differently fused matmuls) and the greedy codes with the checkpoint's repetition penalty 1.05.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch

from omni.model.loaders.talker_weights import SpeechModels, load_speech
from omni.model.talker import Talker, TalkerTextEmbeds, thinker_slot
from omni.model.voices import UnknownVoiceError, VoiceBank
from tests.model.encoder_reference import rel_err
from tests.model.tiny_speech import SPEAKER_BOS, hf_talker, hf_token2wav, tiny_voices, write_speech_checkpoint

P, N_TEXT, STEPS, E = 7, 4, 14, 32


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, SpeechModels, Path]:
    ref = hf_talker(seed=2)
    d = write_speech_checkpoint(tmp_path_factory.mktemp("talker"), ref, hf_token2wav(), tiny_voices())
    return ref, load_speech(d), d


def _thinker_outputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """Stand-ins for what the Thinker hands over: prompt slots, reply slots, special-token embeddings."""
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt": torch.randn(1, P, E, generator=g),
        "reply": torch.randn(1, N_TEXT, E, generator=g),
        "spk": torch.randn(E, generator=g),
        "end": torch.randn(E, generator=g),
        "pad": torch.randn(E, generator=g),
        "prompt_ids": torch.randint(0, 150, (1, P), generator=g),
    }


def reference_talker(
    ref: Any,
    prompt: torch.Tensor,
    reply: torch.Tensor,
    specials: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    text_ids: torch.Tensor,
    steps: int,
    **rope: Any,
) -> tuple[list[int], torch.Tensor]:
    """The reference forward, stepped by hand with transformers' own logits processors (greedy).

    Not `ref.generate`: in transformers 5.23 generate() does not pass the attention mask on to the Talker's
    forward, which then skips the branch that adds the codec pad/start embeddings to the last two prompt
    slots and computes TMRoPE positions; the forward with a mask is the documented (and trained) path.
    """
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, SuppressTokensLogitsProcessor

    cfg = ref.config
    P = prompt.shape[1]
    spk, end, pad = specials
    ids = torch.tensor([[cfg.tts_codec_mask_token_id] * P + [cfg.tts_codec_pad_token_id, cfg.tts_codec_start_token_id]])
    embeds = torch.cat([prompt, spk[None, None], reply[:, :1]], dim=1)
    reply = torch.cat([reply[:, 1:], end[None, None], pad[None, None]], dim=1)
    stop = {cfg.tts_codec_pad_token_id, cfg.tts_codec_end_token_id}
    process = LogitsProcessorList(
        [RepetitionPenaltyLogitsProcessor(1.05), SuppressTokensLogitsProcessor([cfg.tts_codec_start_token_id])]
    )
    codes: list[int] = []
    logits = []
    with torch.no_grad():
        out = ref(
            inputs_embeds=embeds,
            attention_mask=torch.ones_like(ids),
            input_text_ids=text_ids,
            thinker_reply_part=reply,
            use_cache=True,
            **rope,  # what get_rope_index needs for media prompts (e.g. audio_feature_lengths)
        )
        while True:
            logits.append(out.logits[:, -1])
            code = int(process(cast(torch.LongTensor, ids), out.logits[:, -1].clone()).argmax(-1))
            codes.append(code)
            ids = torch.cat([ids, torch.tensor([[code]])], dim=1)
            if code in stop or len(codes) == steps:
                break
            out = ref(
                input_ids=ids[:, -1:],
                attention_mask=torch.ones_like(ids),
                past_key_values=out.past_key_values,
                thinker_reply_part=out.thinker_reply_part,
                use_cache=True,
            )
    return codes, torch.cat(logits, dim=0)


def _ours(talker: Talker, th: dict[str, torch.Tensor]) -> tuple[list[int], torch.Tensor]:
    texts = TalkerTextEmbeds(speaker_start=th["spk"], text_end=th["end"], text_pad=th["pad"])
    state = talker.init_state(texts, sampling=talker.cfg.sampling(temperature=0.0, max_new_tokens=STEPS))
    logits = [talker.prefill(state, th["prompt"], th["reply"][:, 0])]
    codes = [talker.choose(state, logits[-1])]
    fed = 1
    while not state.done:
        if not talker.can_step(state):  # the Thinker produces its next token only now
            if fed < N_TEXT:
                talker.push_text(state, th["reply"][:, fed])
                fed += 1
            else:
                talker.end_text(state)
            continue
        logits.append(talker.decode_logits(state))
        codes.append(talker.choose(state, logits[-1]))
    return codes, torch.cat(logits, dim=0)


def test_talker_logits_and_greedy_codes_match_reference(models: tuple[Any, SpeechModels, Path]) -> None:
    ref, ours, _ = models
    th = _thinker_outputs()
    text_ids = torch.cat([th["prompt_ids"], torch.tensor([[SPEAKER_BOS["Chelsie"], 5]])], dim=1)
    specials = (th["spk"], th["end"], th["pad"])
    want_codes, want_logits = reference_talker(ref, th["prompt"], th["reply"], specials, text_ids, STEPS)
    codes, logits = _ours(ours.talker, th)
    assert len(want_codes) > N_TEXT + 2, want_codes  # reached the text end / pad slots
    assert codes == want_codes
    assert logits.shape == want_logits.shape
    assert want_logits.abs().mean() > 0.5
    assert rel_err(logits, want_logits) < 1e-4


def test_talker_waits_for_thinker_tokens(models: tuple[Any, SpeechModels, Path]) -> None:
    _, ours, _ = models
    talker, th = ours.talker, _thinker_outputs(1)
    state = talker.init_state(TalkerTextEmbeds(th["spk"], th["end"], th["pad"]), seed=0)
    assert not talker.can_step(state)
    talker.start(state, th["prompt"], th["reply"][:, 0])
    assert not talker.can_step(state)  # second text token not there yet
    with pytest.raises(ValueError, match="push_text"):
        talker.step(state)


def test_sampling_defaults_are_seedable(models: tuple[Any, SpeechModels, Path]) -> None:
    _, ours, _ = models
    talker, th = ours.talker, _thinker_outputs(2)
    sampling = talker.cfg.sampling()
    assert (sampling.temperature, sampling.top_k, sampling.top_p, sampling.repetition_penalty) == (0.9, 40, 0.8, 1.05)
    assert sampling.stop_token_ids == {62, 61}

    def run(seed: int) -> list[int]:
        state = talker.init_state(TalkerTextEmbeds(th["spk"], th["end"], th["pad"]), seed=seed)
        codes = [talker.start(state, th["prompt"], th["reply"][:, 0])]
        talker.end_text(state)
        while not state.done and len(codes) < 20:
            codes.append(talker.step(state))
        assert 60 not in codes  # codec_start is suppressed
        return codes

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_thinker_slot_zeroes_media_embeddings() -> None:
    hidden, embeds = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    media = torch.tensor([[False, True, True, False]])
    got = thinker_slot(hidden, embeds, media)
    assert torch.equal(got[:, 1:3], hidden[:, 1:3])
    assert torch.equal(got[:, [0, 3]], hidden[:, [0, 3]] + embeds[:, [0, 3]])


def test_voices(models: tuple[Any, SpeechModels, Path]) -> None:
    _, ours, d = models
    bank = ours.voices
    assert bank.names == ["Chelsie", "Ethan"] and bank.get().name == "Chelsie"
    assert bank.get("ethan").bos_token == SPEAKER_BOS["Ethan"]
    assert torch.equal(bank.get("Chelsie").ref_mel, tiny_voices().get("Chelsie").ref_mel)
    with pytest.raises(UnknownVoiceError, match="'Bob'.*Chelsie, Ethan"):
        bank.get("Bob")
    table = torch.randn(200, E)
    texts = TalkerTextEmbeds.from_table(table, ours.talker.cfg, bank.get("Ethan").bos_token)
    assert torch.equal(texts.speaker_start, table[SPEAKER_BOS["Ethan"]]) and torch.equal(texts.text_pad, table[173])
    assert VoiceBank.load(d / "spk_dict.pt").names == bank.names


def test_talker_config_round_trip_and_presets() -> None:
    from omni.model.errors import ConfigError
    from omni.model.talker import TalkerConfig

    cfg = TalkerConfig.from_name("qwen2.5-omni-7b")
    assert (cfg.decoder.hidden_size, cfg.decoder.num_layers, cfg.decoder.head_dim, cfg.embedding_size) == (
        896,
        24,
        128,
        3584,
    )
    assert TalkerConfig.from_hf_config({"talker_config": cfg.to_hf_config()}) == cfg
    with pytest.raises(ConfigError, match="unknown talker preset"):
        TalkerConfig.from_name("qwen9")


def test_malformed_voice_table(tmp_path: Path) -> None:
    from omni.model.errors import CheckpointError

    torch.save({"Chelsie": {"cond": torch.zeros(1, 16)}}, tmp_path / "spk_dict.pt")
    with pytest.raises(CheckpointError, match="'Chelsie' must have"):
        VoiceBank.load(tmp_path / "spk_dict.pt")
    with pytest.raises(CheckpointError, match="no voice table"):
        VoiceBank.load(tmp_path / "missing.pt")
