"""Qwen3-Omni prompt pieces and special ids against transformers' tokenizer and processor rules on the tiny
checkpoint. (Qwen3OmniMoeProcessor itself cannot be built here: its video processor needs torchvision, which
the environment lacks; its placeholder functions are called directly instead.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from omni.model.lm.tokenizer import TextTokenizer
from omni.model.prompt import PromptBuilder, PromptError
from omni.model.qwen3.config import Qwen3OmniConfig
from omni.model.qwen3.prompt import SpecialIds, prompt_builder
from omni.model.tmrope import rope_index
from tests.model.qwen3_tiny import IDS, tiny_config_dict

CFG = Qwen3OmniConfig.from_hf_config(tiny_config_dict())


@pytest.fixture(scope="module")
def tok(qwen3_tiny_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_directory(qwen3_tiny_dir)


@pytest.fixture(scope="module")
def builder(tok: TextTokenizer) -> PromptBuilder:
    return prompt_builder(tok, CFG.thinker)


@pytest.fixture(scope="module")
def hf_tok(qwen3_tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tiny_dir)


def test_transformers_tokenizer_names_the_same_media_ids(hf_tok: Any, builder: PromptBuilder) -> None:
    ids = builder.ids
    assert (hf_tok.audio_token_id, hf_tok.image_token_id, hf_tok.video_token_id) == (ids.audio, ids.image, ids.video)
    assert hf_tok.convert_tokens_to_ids([hf_tok.audio_bos_token, hf_tok.audio_eos_token]) == [
        ids.audio_start,
        ids.audio_end,
    ]
    assert hf_tok.convert_tokens_to_ids([hf_tok.vision_bos_token, hf_tok.vision_eos_token]) == [
        ids.vision_start,
        ids.vision_end,
    ]


def test_turn_equals_the_rendered_template_with_processor_expansion(hf_tok: Any, builder: PromptBuilder) -> None:
    """A user turn with audio and an image, built piece by piece, equals transformers' tokenizer on the chat
    template's rendering with the placeholders expanded by the processor's own counting rules."""
    import torch
    from transformers import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths

    frames = 337  # mel frames of a 3.37-s clip
    n_audio = int(_get_feat_extract_output_lengths(torch.tensor(frames), 50))
    proc = Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2,
                                    min_pixels=32 * 32, max_pixels=256 * 256)
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    grid = proc(images=[image], return_tensors="np")["image_grid_thw"][0].tolist()
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "image"}, {"type": "text", "text": "hi?"}]}]
    rendered = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    rendered = rendered.replace("<|audio_pad|>", "<|audio_pad|>" * n_audio)
    rendered = rendered.replace("<|image_pad|>", "<|image_pad|>" * (int(np.prod(grid)) // 4))
    expected = hf_tok(rendered, add_special_tokens=False)["input_ids"]
    got = (
        builder.turn_start("user")
        + builder.audio(CFG.thinker.audio_tokens(frames))
        + builder.image(grid)
        + builder.text("hi?")
        + builder.generation_prompt()
    )
    assert got == expected
    rope_index(got, builder.ids, builder.rope, audio_tokens=[n_audio], image_grids=[grid])  # placeholders consistent


def test_video_with_audio_is_the_processors_merge(builder: PromptBuilder) -> None:
    from transformers import Qwen3OmniMoeProcessor

    proc = SimpleNamespace(
        video_processor=SimpleNamespace(merge_size=2),
        audio_bos_token="B",
        audio_eos_token="E",
        video_token="V",
        audio_token="A",
    )
    table = {"B": IDS["audio_start"], "E": IDS["audio_end"], "V": IDS["video"], "A": IDS["audio"]}
    for n_audio, grid, spg in ((43, (4, 4, 4), 2.0), (70, (6, 2, 4), 1.0), (5, (1, 8, 8), 2.0)):
        text = Qwen3OmniMoeProcessor.replace_video_with_audio_token(
            proc,
            {"video_grid_thw": [np.array(grid)], "video_second_per_grid": [spg]},
            0,
            {"num_audio_tokens": [n_audio]},
            0,
            position_id_per_seconds=13,
        )
        expected = [IDS["vision_start"]] + [table[c] for c in text] + [IDS["vision_end"]]
        assert builder.video_with_audio(grid, spg, n_audio) == expected


def test_special_ids_agree_with_the_tokenizer(tok: TextTokenizer) -> None:
    ids = SpecialIds.from_config(CFG)
    ids.check(tok)
    assert tok.encode("<|im_start|>assistant\n")[:2] == [ids.im_start, ids.assistant]
    raw = tiny_config_dict()
    raw["tts_eos_token_id"] = IDS["tts_pad"]
    raw["user_token_id"] = 5
    with pytest.raises(PromptError, match=r"<tts_text_eod>: tokenizer 267, config.json 265.*'user'"):
        SpecialIds.from_config(Qwen3OmniConfig.from_hf_config(raw)).check(tok)


def test_a_qwen2_5_tokenizer_is_refused(tmp_path: Path) -> None:
    from tests.model.omni_tiny import write_tokenizer

    write_tokenizer(tmp_path)
    with pytest.raises(PromptError, match=r"lacks the Qwen3-Omni special tokens \['<\|audio_pad\|>'"):
        prompt_builder(TextTokenizer.from_directory(tmp_path), CFG.thinker)
