"""Loading a Qwen3-Omni checkpoint directory in its released layout: config + Thinker (+ the speech parts' names).

config.json is the released `Qwen3OmniMoeForConditionalGeneration` layout (omni/model/qwen3/config.py); weights are
single or sharded safetensors with `thinker.model.*`, `thinker.lm_head.weight`, `thinker.audio_tower.*`,
`thinker.visual.*` (a Thinker saved on its own has the same names without `thinker.`), MoE experts stored per
expert or fused. `talker.*` and `code2wav.*` tensors stay on disk: `LoadedQwen3.speech_prefixes` names them for
the speech stage (omni/model/qwen3/talker.py, omni/model/qwen3/speech.py). Tokenizer files and preprocessor_config.json
come from the same directory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from omni.model.encoders.audio_encoder import sinusoid_table
from omni.model.encoders.audio_frontend import LogMel
from omni.model.encoders.vision_preprocess import VisionPreprocessConfig
from omni.model.encoders.weights import strip_prefix
from omni.model.errors import CheckpointError, ConfigError
from omni.model.layers.quant_linear import quantize_decoder
from omni.model.lm.tokenizer import TextTokenizer
from omni.model.loaders.family import QWEN3_OMNI_MOE, family_of_config
from omni.model.loaders.hf import SafetensorsIndex, read_config
from omni.model.loaders.omni import DTYPES, EXPECTED_AUDIO_FRONTEND
from omni.model.loaders.weights import build_decoder, expected_shapes
from omni.model.prompt import PromptBuilder
from omni.model.qwen3.config import Qwen3OmniConfig
from omni.model.qwen3.prompt import SpecialIds, prompt_builder
from omni.model.qwen3.talker import Qwen3Talker
from omni.model.qwen3.thinker import Qwen3Thinker

SPEECH_PARTS = ("talker.", "code2wav.")


@dataclass
class LoadedQwen3:
    """A Qwen3-Omni Thinker with its config, tokenizer, prompt builder and preprocessing settings.

    `speech_prefixes`: the tensor-name prefixes of the checkpoint's speech parts that were left on disk
    (empty for Thinking/Captioner checkpoints); `index` reads them."""

    config: Qwen3OmniConfig
    model: Qwen3Thinker
    tokenizer: TextTokenizer
    prompt: PromptBuilder
    special: SpecialIds
    vision_preprocess: VisionPreprocessConfig
    index: SafetensorsIndex
    source: str
    load_seconds: float
    speech_prefixes: tuple[str, ...] = field(default_factory=tuple)


def read_qwen3_config(directory: Path) -> Qwen3OmniConfig:
    raw = read_config(directory)
    family = family_of_config(raw, str(directory / "config.json"))
    if family != QWEN3_OMNI_MOE:
        raise CheckpointError(f"{directory}: a {family} checkpoint; this loader reads Qwen3-Omni directories")
    try:
        return Qwen3OmniConfig.from_hf_config(raw)
    except ConfigError as e:
        raise CheckpointError(f"{directory}/config.json: {e}") from None


def _dtype(cfg: Qwen3OmniConfig) -> torch.dtype:
    name = cfg.thinker.text_config.get("dtype") or cfg.thinker.text_config.get("torch_dtype") or cfg.dtype
    return DTYPES.get(str(name), torch.float32)


def load_qwen3_thinker_model(
    directory: str | os.PathLike[str], dtype: torch.dtype | None = None, device: str = "cpu",
    cfg: Qwen3OmniConfig | None = None, index: SafetensorsIndex | None = None,
) -> Qwen3Thinker:
    """The Thinker's weights from a Qwen3-Omni directory; dtype defaults to the checkpoint's own."""
    directory = Path(directory)
    cfg = cfg or read_qwen3_config(directory)
    index = index or SafetensorsIndex(directory)
    p = "thinker." if any(k.startswith("thinker.") for k in index.files) else ""
    dtype = dtype or _dtype(cfg)
    with torch.device("meta"):
        try:
            skeleton = Qwen3Thinker(cfg.thinker, lm=None)
        except ConfigError as e:
            raise CheckpointError(f"{directory}/config.json: {e}") from None
    text = skeleton.lm.cfg
    if p + "lm_head.weight" not in index.files and not text.tie_word_embeddings:
        raise CheckpointError(f"{directory}: tensor '{p}lm_head.weight' is missing")
    encoders = [n for n in index.files if n.startswith((p + "audio_tower.", p + "visual."))]
    bar = tqdm(total=len(expected_shapes(text)) + len(encoders), desc=f"loading {directory.name}", unit="tensor",
               disable=None, leave=False)

    def counted(get: Callable[[str], torch.Tensor | None]) -> Callable[[str], torch.Tensor | None]:
        def wrapped(name: str) -> torch.Tensor | None:
            bar.update(1)
            return get(name)

        return wrapped

    try:
        lm = build_decoder(text, counted(lambda n: index.get(p + ("lm_head.weight" if n == "lm_head.weight"
                                                                    else "model." + n))),
                           dtype, device, str(directory))
        with torch.device("meta"):
            thinker = Qwen3Thinker(cfg.thinker, lm=lm)
        get = counted(index.get)
        tensors = {n: get(n) for n in encoders}
        for enc, prefix in ((thinker.audio_tower, p + "audio_tower."), (thinker.visual, p + "visual.")):
            enc.to_empty(device=device).to(dtype)
            enc.load_weights(strip_prefix({k: v for k, v in tensors.items() if v is not None}, prefix))
    finally:
        bar.close()
    # computed buffers are not in the checkpoint: rebuild the ones the meta construction left empty
    a = thinker.audio_cfg
    thinker.audio_tower.positional_embedding = sinusoid_table(a.max_source_positions, a.hidden_size).to(device)
    thinker.mel = LogMel(a.num_mel_bins).to(device)
    return thinker.eval()


def _preprocess(directory: Path, n_mels: int) -> VisionPreprocessConfig:
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return VisionPreprocessConfig.qwen3()
    try:
        pre = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    for key, want in EXPECTED_AUDIO_FRONTEND.items():
        if key in pre and int(pre[key]) != want:
            raise CheckpointError(f"{path}: {key}={pre[key]}, but the audio front-end implements {want}")
    if "feature_size" in pre and int(pre["feature_size"]) != n_mels:
        raise CheckpointError(f"{path}: feature_size {pre['feature_size']} != audio_config.num_mel_bins {n_mels}")
    return VisionPreprocessConfig.from_preprocessor_config(pre, VisionPreprocessConfig.qwen3())


def load_qwen3(directory: str | os.PathLike[str], dtype: torch.dtype | None = None, device: str = "cpu") -> LoadedQwen3:
    """Config + Thinker + tokenizer + preprocessing of a Qwen3-Omni checkpoint directory."""
    start = time.perf_counter()
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    cfg = read_qwen3_config(directory)
    index = SafetensorsIndex(directory)
    model = load_qwen3_thinker_model(directory, dtype, device, cfg, index)
    vision_pre = _preprocess(directory, model.audio_cfg.num_mel_bins)
    tokenizer = TextTokenizer.from_directory(directory)
    special = SpecialIds.from_config(cfg)
    special.check(tokenizer)
    prompt = prompt_builder(tokenizer, cfg.thinker)
    speech = tuple(s for s in SPEECH_PARTS if any(k.startswith(s) for k in index.files))
    if cfg.speaks and "talker." not in speech:
        raise CheckpointError(f"{directory}: config.json has a talker_config but no talker.* tensors")
    return LoadedQwen3(cfg, model, tokenizer, prompt, special, vision_pre, index, str(directory),
                       time.perf_counter() - start, speech)


def quantize_qwen3(thinker: Qwen3Thinker, talker: Qwen3Talker | None, kind: str) -> int:
    """`--quant int8|int4`: weight-only quantisation (omni/model/layers/quant_linear.py) of the Thinker's decoder and,
    when given, the Talker's MoE decoder and its code predictor: attention projections, expert stacks, shared
    experts. Routers, embeddings, LM heads, the encoders, the Talker's projections and Code2Wav stay in their
    dtype. Returns how many projections and expert stacks were replaced."""
    n = quantize_decoder(thinker.lm, kind)
    if talker is not None:
        n += quantize_decoder(talker.decoder, kind) + quantize_decoder(talker.predictor, kind)
    return n
