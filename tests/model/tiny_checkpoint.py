"""Test-only: what the tiny Qwen2.5-Omni and Qwen3-Omni checkpoint writers (omni_tiny.py, qwen3_tiny.py) share.

A byte-level tokenizer (one token per byte, the 256-symbol alphabet at ids 0..255, the family's special tokens
from 256 on), the released preprocessor_config.json fields, random transformers models re-initialised with
fan-in scaling, and the save flow (float32 reference kept, checkpoint written in the asked dtype).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from tests.model.encoder_reference import randomize_

# The Whisper feature extractor fields of both released preprocessor_config.json files (128 mels, 10 ms hop).
_WHISPER_FEATURES: dict[str, Any] = {
    "chunk_length": 300,
    "feature_size": 128,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 4800000,
    "nb_max_frames": 30000,
    "sampling_rate": 16000,
    "padding_value": 0.0,
}

# The audio encoder shape both tiny Thinkers share (Whisper key names): 2 layers of d 32, 4 heads.
TINY_AUDIO: dict[str, Any] = dict(
    num_mel_bins=128,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    d_model=32,
    max_source_positions=1500,
)


def use_sdpa(*configs: Any) -> None:
    """Run the given transformers (sub-)configs' attention with SDPA (the path our parity tests compare to)."""
    for cfg in configs:
        cfg._attn_implementation = "sdpa"


def random_model(model_cls: Any, hf_cfg: Any, seed: int = 0) -> Any:
    """`model_cls(hf_cfg)` in eval mode, built under `torch.manual_seed(seed)` and re-initialised by randomize_."""
    torch.manual_seed(seed)
    model = model_cls(hf_cfg).eval()
    randomize_(model, seed)
    return model


def write_byte_tokenizer(
    directory: Path, specials: dict[str, int], config: dict[str, Any], added: dict[str, int] | None = None
) -> None:
    """tokenizer.json (byte-level BPE without merges, `specials` then the non-special `added` tokens at the
    given ids, checked) and tokenizer_config.json holding `config`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    added = added or {}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if added:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    for text, i in (specials | added).items():
        assert tok.token_to_id(text) == i, (text, tok.token_to_id(text))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def write_preprocessor_config(directory: Path, features: dict[str, Any], images: dict[str, Any]) -> None:
    """preprocessor_config.json: the Whisper feature extractor fields, the family's own `features` fields after
    them, then the Qwen2-VL image processor's `images` fields."""
    fields = _WHISPER_FEATURES | features | {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "image_processor_type": "Qwen2VLImageProcessor",
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(fields | images))


def save_tiny(
    build: Callable[[], Any],
    directory: Path,
    dtype: torch.dtype,
    writers: Iterable[Callable[[Path], None]],
    **save_kwargs: Any,
) -> tuple[Any, Path]:
    """Build the float32 reference, save a fresh build in `dtype` (the reference itself when float32) with
    `save_pretrained(**save_kwargs)`, then run each writer on the directory; returns (reference, directory)."""
    model = build()
    directory.mkdir(parents=True, exist_ok=True)
    to_save = model if dtype == torch.float32 else build().to(dtype)
    to_save.save_pretrained(directory, **save_kwargs)
    for write in writers:
        write(directory)
    return model, directory
