"""Tiny random Qwen2.5-Omni checkpoints, built with transformers (test-only) in the released layout.

The config is the released config.json's layout with every size shrunk (shared/reference/qwen_omni.md
sections 1.8 and 4.2): special token ids are remapped into a 288-token vocabulary whose first 256 ids are
the byte-level alphabet, so the tokenizer written next to the weights encodes any text. With
`with_talker=True` (the default) the whole Qwen2_5OmniForConditionalGeneration is saved: thinker.*,
talker.* and token2wav.* tensors, as in the released checkpoint. Weights are re-initialised with
fan-in scaling so outputs are O(1) (the default std-0.02 init would make a 1e-4 comparison meaningless).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.model.tiny_checkpoint import TINY_AUDIO, random_model, save_tiny, use_sdpa, write_byte_tokenizer
from tests.model.tiny_checkpoint import write_preprocessor_config as _write_preprocessor
from tests.model.tiny_speech import BIGVGAN, DIT, TALKER

VOCAB = 288
SPECIALS = {
    "<|endoftext|>": 256,
    "<|im_start|>": 257,
    "<|im_end|>": 258,
    "<|AUDIO|>": 259,
    "<|audio_bos|>": 260,
    "<|audio_eos|>": 261,
    "<|vision_bos|>": 262,
    "<|vision_eos|>": 263,
    "<|IMAGE|>": 264,
    "<|VIDEO|>": 265,
    "<tts_pad>": 266,
    "<tts_text_bos>": 267,
    "<tts_text_eod>": 268,
    "<tts_text_bos_single>": 269,
}
IDS = {
    "audio": 259,
    "audio_start": 260,
    "audio_end": 261,
    "vision_start": 262,
    "vision_end": 263,
    "image": 264,
    "video": 265,
    "tts_text_pad": 266,
    "tts_text_bos": 267,
    "tts_text_eos": 268,
    "spk_bos": 269,
}
HIDDEN = 64

# A Qwen2.5-Omni style ChatML template (system default, then role blocks with media placeholders).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_config_dict(with_talker: bool = True) -> dict[str, Any]:
    """config.json content: the released layout with tiny sizes and remapped token ids."""
    media_ids = dict(  # the Thinker and the Talker both name the media placeholder tokens
        audio_token_index=IDS["audio"],
        image_token_index=IDS["image"],
        video_token_index=IDS["video"],
        audio_start_token_id=IDS["audio_start"],
        audio_end_token_id=IDS["audio_end"],
        vision_start_token_id=IDS["vision_start"],
        vision_end_token_id=IDS["vision_end"],
    )
    thinker = dict(
        audio_config=dict(TINY_AUDIO, output_dim=HIDDEN, n_window=100),
        vision_config=dict(
            depth=3,
            hidden_size=32,
            intermediate_size=48,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            out_hidden_size=HIDDEN,
            fullatt_block_indexes=[1],
            in_channels=3,
        ),
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            max_position_embeddings=2048,
            # head_dim 16 -> 8 rotary frequencies split T/H/W = 4/2/2 (real: 16/24/24 of 64)
            rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 2, 2]),
        ),
        **media_ids,
        user_token_id=SPECIALS["<|im_start|>"],
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        bos_token_id=SPECIALS["<|endoftext|>"],
        eos_token_id=SPECIALS["<|im_end|>"],
        pad_token_id=SPECIALS["<|endoftext|>"],
    )
    # The speech tests' tiny Talker, reading this Thinker's width and token ids.
    talker = dict(
        TALKER,
        embedding_size=HIDDEN,
        tts_text_start_token_id=IDS["tts_text_bos"],
        tts_text_end_token_id=IDS["tts_text_eos"],
        tts_text_pad_token_id=IDS["tts_text_pad"],
        **media_ids,
        position_id_per_seconds=25,
        seconds_per_chunk=2,
    )
    # token2wav's shapes do not depend on the Thinker: the same tiny DiT and BigVGAN as the speech tests
    token2wav = dict(dit_config=dict(DIT), bigvgan_config=dict(BIGVGAN))
    out: dict[str, Any] = {"thinker_config": thinker, "enable_audio_output": with_talker}
    if with_talker:
        out |= {"talker_config": talker, "token2wav_config": token2wav}
    return out


def hf_config(with_talker: bool = True) -> Any:
    from transformers import Qwen2_5OmniConfig

    cfg = Qwen2_5OmniConfig(**tiny_config_dict(with_talker))
    th = cfg.thinker_config
    use_sdpa(th, th.text_config, th.audio_config, th.vision_config)
    return cfg


def build_model(with_talker: bool = True, seed: int = 0) -> Any:
    """The full transformers model (thinker, plus talker and token2wav when asked), re-initialised."""
    from transformers import Qwen2_5OmniForConditionalGeneration

    return random_model(Qwen2_5OmniForConditionalGeneration, hf_config(with_talker), seed)


def write_tokenizer(directory: Path) -> None:
    """tokenizer.json (byte-level, no merges: one token per byte; specials at 256+), tokenizer_config.json."""
    config = {
        "chat_template": CHAT_TEMPLATE,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "add_bos_token": False,
    }
    write_byte_tokenizer(directory, SPECIALS, config)


def write_preprocessor_config(directory: Path) -> None:
    """The released preprocessor_config.json's fields (Whisper feature extractor + Qwen2-VL image processor)."""
    images = {
        "processor_class": "Qwen2_5OmniProcessor",
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    _write_preprocessor(directory, {"return_attention_mask": True}, images)


def save_tiny_omni(
    directory: Path,
    with_talker: bool = True,
    dtype: torch.dtype = torch.float32,
    shard: str | None = None,
    seed: int = 0,
) -> tuple[Any, Path]:
    """Build, save (safetensors, optionally sharded, in `dtype`) with tokenizer and preprocessor files;
    returns (float32 reference model, directory)."""
    kwargs = {"max_shard_size": shard} if shard else {}
    return save_tiny(
        lambda: build_model(with_talker, seed), directory, dtype, (write_tokenizer, write_preprocessor_config), **kwargs
    )
