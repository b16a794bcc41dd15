"""Loading the Thinker of a Qwen2.5-Omni checkpoint directory in its released layout.

config.json carries `thinker_config` (text/audio/vision sections, token ids, TMRoPE timing); weights are
single or sharded safetensors in bf16/fp16/fp32 with `thinker.model.*`, `thinker.lm_head.weight`,
`thinker.audio_tower.*`, `thinker.visual.*` (a Thinker saved on its own has the same names without
`thinker.`). `talker.*` and `token2wav.*` tensors are left on disk: they belong to the speech stack.
Tokenizer files and preprocessor_config.json (mel and pixel settings) come from the same directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omni.model.encoders.audio_encoder import sinusoid_table
from omni.model.encoders.audio_frontend import LogMel
from omni.model.encoders.vision_preprocess import VisionPreprocessConfig
from omni.model.errors import CheckpointError, ConfigError
from omni.model.lm.tokenizer import TextTokenizer
from omni.model.loaders.family import QWEN3_OMNI_MOE, family_of_config
from omni.model.loaders.hf import SafetensorsIndex, read_config
from omni.model.loaders.weights import build_decoder
from omni.model.prompt import PromptBuilder
from omni.model.thinker import Thinker, ThinkerConfig

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Whisper front-end values the Thinker was trained with (shared/reference/qwen_omni.md section 1.2).
EXPECTED_AUDIO_FRONTEND = {"sampling_rate": 16000, "n_fft": 400, "hop_length": 160}


@dataclass
class LoadedThinker:
    """A Thinker with its tokenizer, prompt builder and preprocessing settings, ready for sessions."""

    model: Thinker
    tokenizer: TextTokenizer
    prompt: PromptBuilder
    vision_preprocess: VisionPreprocessConfig
    source: str
    load_seconds: float


def is_omni_checkpoint(path: str | os.PathLike[str]) -> bool:
    """A directory whose config.json has a thinker_config section."""
    p = Path(path)
    if not (p / "config.json").is_file():
        return False
    try:
        return "thinker_config" in read_config(p)
    except CheckpointError:
        return False


def _dtype(raw: dict[str, Any]) -> torch.dtype:
    th = raw.get("thinker_config", {})
    for section in (th.get("text_config", {}), th, raw):
        name = section.get("torch_dtype") or section.get("dtype")
        if name:
            return DTYPES.get(str(name), torch.float32)
    return torch.float32


def _prefix(index: SafetensorsIndex) -> str:
    return "thinker." if any(k.startswith("thinker.") for k in index.files) else ""


def _tensors(index: SafetensorsIndex, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    for name in index.files:
        if name.startswith(prefix):
            t = index.get(name)
            assert t is not None
            yield name[len(prefix) :], t


def _check_frontend(directory: Path, cfg: ThinkerConfig) -> None:
    import json

    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return
    pre = json.loads(path.read_text())
    for key, want in EXPECTED_AUDIO_FRONTEND.items():
        if key in pre and int(pre[key]) != want:
            raise CheckpointError(f"{path}: {key}={pre[key]}, but the audio front-end implements {want}")
    if "feature_size" in pre and int(pre["feature_size"]) != cfg.audio.num_mel_bins:
        raise CheckpointError(
            f"{path}: feature_size {pre['feature_size']} != audio_config.num_mel_bins {cfg.audio.num_mel_bins}"
        )


def _refuse_qwen3(raw: dict[str, Any], directory: Path) -> None:
    """A Qwen3-Omni directory read as Qwen2.5 would fail on some field deep inside; say what it is instead."""
    try:
        family = family_of_config(raw)
    except CheckpointError:
        return  # hand-written or partial configs: the Qwen2.5 reader reports what is missing
    if family == QWEN3_OMNI_MOE:
        raise CheckpointError(f"{directory}: a Qwen3-Omni checkpoint; this loader reads Qwen2.5-Omni directories")


def load_thinker_model(
    directory: str | os.PathLike[str], dtype: torch.dtype | None = None, device: str = "cpu"
) -> Thinker:
    """The Thinker's weights from a Qwen2.5-Omni directory; dtype defaults to the checkpoint's own."""
    directory = Path(directory)
    raw = read_config(directory)
    _refuse_qwen3(raw, directory)
    try:
        cfg = ThinkerConfig.from_hf_config(raw)
    except ConfigError as e:
        raise CheckpointError(f"{directory}/config.json: {e}") from None
    except KeyError as e:
        raise CheckpointError(f"{directory}/config.json: missing field {e}") from None
    dtype = dtype or _dtype(raw)
    index = SafetensorsIndex(directory)
    p = _prefix(index)
    if p + "lm_head.weight" not in index.files and not cfg.text.tie_word_embeddings:
        # An absent head means tied embeddings only where the config allows it (Qwen2.5-3B style).
        raise CheckpointError(f"{directory}: tensor '{p}lm_head.weight' is missing")
    where = str(directory)

    def get(name: str) -> torch.Tensor | None:
        return index.get(p + ("lm_head.weight" if name == "lm_head.weight" else "model." + name))

    lm = build_decoder(cfg.text, get, dtype, device, where)
    with torch.device("meta"):  # encoder weights are allocated once, by load_weights' copies
        thinker = Thinker(cfg, lm=lm)
    for enc in (thinker.audio_tower, thinker.visual):
        enc.to_empty(device=device).to(dtype)
    thinker.audio_tower.load_weights(dict(_tensors(index, p + "audio_tower.")))
    thinker.visual.load_weights(dict(_tensors(index, p + "visual.")))
    # Computed buffers are not in the checkpoint: rebuild the ones the meta construction left empty.
    thinker.audio_tower.positional_embedding = sinusoid_table(cfg.audio.max_source_positions, cfg.audio.hidden_size).to(
        device=device
    )
    thinker.mel = LogMel(cfg.audio.num_mel_bins).to(device)
    return thinker.eval()


def load_thinker(
    directory: str | os.PathLike[str], dtype: torch.dtype | None = None, device: str = "cpu"
) -> LoadedThinker:
    """Thinker + tokenizer + preprocessing settings of a Qwen2.5-Omni checkpoint directory."""
    start = time.perf_counter()
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    model = load_thinker_model(directory, dtype, device)
    _check_frontend(directory, model.cfg)
    tokenizer = TextTokenizer.from_directory(directory)
    pre_path = directory / "preprocessor_config.json"
    vision_pre = VisionPreprocessConfig()
    if pre_path.is_file():
        import json

        vision_pre = VisionPreprocessConfig.from_preprocessor_config(json.loads(pre_path.read_text()))
    prompt = PromptBuilder(tokenizer, model.cfg.tokens, model.cfg.rope)
    return LoadedThinker(model, tokenizer, prompt, vision_pre, str(directory), time.perf_counter() - start)
