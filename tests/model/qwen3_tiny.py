"""Tiny random Qwen3-Omni (MoE) checkpoints, built with transformers (test-only) in the released layout.

The config is the released config.json's layout (shared/reference/qwen_omni.md sections 2.8 and 4.2) with
every size shrunk: special token ids are remapped into a 300-token vocabulary whose first 256 ids are the
byte-level alphabet (the tokenizer approach of tests/model/omni_tiny.py), so the tokenizer written next to
the weights encodes any text. The whole Qwen3OmniMoeForConditionalGeneration is saved (thinker.*, talker.*,
code2wav.*), sharded with model.safetensors.index.json like the release, and with the mixture-of-experts
weights per expert (`mlp.experts.{e}.{gate,up,down}_proj.weight`) as in the released tensor list.
Weights are re-initialised with fan-in scaling so outputs are O(1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tests.model.tiny_checkpoint import TINY_AUDIO, random_model, save_tiny, use_sdpa, write_byte_tokenizer
from tests.model.tiny_checkpoint import write_preprocessor_config as _write_preprocessor

VOCAB = 300
# The released tokenizer's special tokens (Qwen3-Omni adds the audio and TTS tokens after </think>).
SPECIALS = {
    "<|endoftext|>": 256,
    "<|im_start|>": 257,
    "<|im_end|>": 258,
    "<|vision_start|>": 259,
    "<|vision_end|>": 260,
    "<|image_pad|>": 261,
    "<|video_pad|>": 262,
    "<|audio_start|>": 263,
    "<|audio_end|>": 264,
    "<tts_pad>": 265,
    "<tts_text_bos>": 266,
    "<tts_text_eod>": 267,
    "<tts_text_bos_single>": 268,
    "<|audio_pad|>": 269,
}
# The role words are single tokens in the released vocabulary (system 8948, user 872, assistant 77091), as the
# Talker finds turns by <|im_start|> + role id; here they are added (non-special) tokens after the specials.
ROLE_WORDS = {"system": 270, "user": 271, "assistant": 272}
IDS = {
    "im_start": SPECIALS["<|im_start|>"],
    "im_end": SPECIALS["<|im_end|>"],
    "vision_start": SPECIALS["<|vision_start|>"],
    "vision_end": SPECIALS["<|vision_end|>"],
    "image": SPECIALS["<|image_pad|>"],
    "video": SPECIALS["<|video_pad|>"],
    "audio_start": SPECIALS["<|audio_start|>"],
    "audio_end": SPECIALS["<|audio_end|>"],
    "tts_pad": SPECIALS["<tts_pad>"],
    "tts_bos": SPECIALS["<tts_text_bos>"],
    "tts_eos": SPECIALS["<tts_text_eod>"],
    "audio": SPECIALS["<|audio_pad|>"],
    **ROLE_WORDS,
}
HIDDEN = 32
CODEC_VOCAB = 1024 + 64  # transformers' talker generate() suppresses the top 1024 ids except codec EOS
CODE_GROUPS = 4

# The Qwen3-Omni chat template's shape: ChatML turns, media as <start><pad><end> placeholders, no default
# system turn (the released template adds none).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_config_dict() -> dict[str, Any]:
    """config.json content: the released layout with tiny sizes and remapped token ids."""
    moe_rope = dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 1, 1], interleaved=True)
    # The Thinker's and the Talker's MoE decoders share their tiny shape: 2 layers, 4 experts top-2.
    moe_text = dict(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,  # 4 rotary frequencies, interleaved T/H/W sections 2/1/1 (real: 24/20/20 of 64)
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        norm_topk_prob=True,
        rope_parameters=moe_rope,
    )
    media_ids = dict(
        audio_token_id=IDS["audio"],
        image_token_id=IDS["image"],
        video_token_id=IDS["video"],
        audio_start_token_id=IDS["audio_start"],
        audio_end_token_id=IDS["audio_end"],
        vision_start_token_id=IDS["vision_start"],
    )
    thinker = dict(
        audio_config=dict(
            TINY_AUDIO, output_dim=HIDDEN, n_window=50, n_window_infer=400, conv_chunksize=500,
            downsample_hidden_size=16,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=HIDDEN,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0, 1],
        ),
        text_config=dict(moe_text, vocab_size=VOCAB, max_position_embeddings=4096),
        **media_ids,
        vision_end_token_id=IDS["vision_end"],
        user_token_id=IDS["user"],
        position_id_per_seconds=13,
        seconds_per_chunk=2,
    )
    talker = dict(
        text_config=dict(moe_text, vocab_size=CODEC_VOCAB, shared_expert_intermediate_size=32),
        code_predictor_config=dict(
            vocab_size=64,
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            num_code_groups=CODE_GROUPS,
            rope_parameters=dict(rope_type="default", rope_theta=1e6),
        ),
        num_code_groups=CODE_GROUPS,
        thinker_hidden_size=HIDDEN,
        accept_hidden_layer=1,
        codec_pad_id=1060,
        codec_bos_id=1061,
        codec_eos_token_id=1062,
        codec_nothink_id=1067,
        codec_think_bos_id=1068,
        codec_think_eos_id=1069,
        speaker_id={"chelsie": 1080, "ethan": 1081, "aiden": 1082},
        **media_ids,
        position_id_per_seconds=13,
        spatial_merge_size=2,
    )
    code2wav = dict(
        codebook_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        sliding_window=72,
        num_quantizers=CODE_GROUPS,
        upsample_rates=[8, 5, 4, 3],
        upsampling_ratios=[2, 2],
        decoder_dim=64,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
    )
    return dict(
        thinker_config=thinker,
        talker_config=talker,
        code2wav_config=code2wav,
        enable_audio_output=True,
        im_start_token_id=IDS["im_start"],
        im_end_token_id=IDS["im_end"],
        system_token_id=IDS["system"],
        user_token_id=IDS["user"],
        assistant_token_id=IDS["assistant"],
        tts_pad_token_id=IDS["tts_pad"],
        tts_bos_token_id=IDS["tts_bos"],
        tts_eos_token_id=IDS["tts_eos"],
    )


def hf_config() -> Any:
    from transformers import Qwen3OmniMoeConfig

    cfg = Qwen3OmniMoeConfig(**tiny_config_dict())
    th = cfg.thinker_config
    use_sdpa(th, th.text_config, th.audio_config, th.vision_config)
    return cfg


def build_model(seed: int = 0) -> Any:
    """The full transformers model (thinker, talker, code2wav), re-initialised with fan-in scaling."""
    from transformers import Qwen3OmniMoeForConditionalGeneration

    return random_model(Qwen3OmniMoeForConditionalGeneration, hf_config(), seed)


_MEDIA_TOKENS = {
    "audio_token": "<|audio_pad|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}


def write_tokenizer(directory: Path) -> None:
    """tokenizer.json (byte-level, one token per byte, specials at 256+, role words as single tokens) and
    tokenizer_config.json naming the media tokens as the released one does (audio_token, image_token, ...)."""
    config = {
        "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "add_bos_token": False,
        **_MEDIA_TOKENS,
        "extra_special_tokens": dict(_MEDIA_TOKENS),
    }
    write_byte_tokenizer(directory, SPECIALS, config, added=ROLE_WORDS)


def write_preprocessor_config(directory: Path) -> None:
    """The released preprocessor_config.json's fields (Whisper feature extractor, 16-px Qwen2-VL image patches)."""
    features = {"padding_side": "right", "return_attention_mask": True, "dither": 0.0}
    images = {
        "processor_class": "Qwen3OmniMoeProcessor",
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    _write_preprocessor(directory, features, images)


def unfuse_experts(directory: Path) -> None:
    """Rewrite fused expert tensors (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj` [E, H, I]) to the
    released per-expert layout, in place, keeping the shard files and updating the index; no-op when the
    checkpoint is already unfused."""
    from safetensors.torch import load_file, save_file

    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    weight_map: dict[str, str] = index["weight_map"]
    for shard in sorted(set(weight_map.values())):
        tensors = load_file(str(directory / shard))
        fused = [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
        if not fused:
            continue
        for key in fused:
            t = tensors.pop(key)
            del weight_map[key]
            base = key.rsplit(".", 1)[0]
            for e in range(t.shape[0]):
                if key.endswith("gate_up_proj"):
                    gate, up = t[e].chunk(2, dim=0)
                    parts = {"gate_proj": gate, "up_proj": up}
                else:
                    parts = {"down_proj": t[e]}
                for proj, w in parts.items():
                    name = f"{base}.{e}.{proj}.weight"
                    tensors[name] = w.contiguous()
                    weight_map[name] = shard
        save_file(tensors, str(directory / shard), metadata={"format": "pt"})
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True))


def save_tiny_qwen3(
    directory: Path, dtype: torch.dtype = torch.float32, shard: str = "200KB", seed: int = 0
) -> tuple[Any, Path]:
    """Build and save (sharded safetensors with an index, in `dtype`, experts per expert) with tokenizer and
    preprocessor files; returns (float32 reference model, directory)."""
    return save_tiny(
        lambda: build_model(seed),
        directory,
        dtype,
        (unfuse_experts, write_tokenizer, write_preprocessor_config),
        max_shard_size=shard,
    )
