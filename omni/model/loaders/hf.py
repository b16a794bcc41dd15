"""Loading a Hugging Face checkpoint directory: config.json + single or sharded safetensors.

Tensors are memory-mapped (safetensors' safe_open) and converted to the requested dtype one at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from omni.model.errors import CheckpointError, ConfigError
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM
from omni.model.loaders.weights import build_decoder, expected_shapes


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (expected a Hugging Face checkpoint directory)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):  # (a list or a string reached the config readers: AttributeError)
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


class SafetensorsIndex:
    """name -> file over one model.safetensors or the shards named by model.safetensors.index.json."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        index = directory / "model.safetensors.index.json"
        single = directory / "model.safetensors"
        self.files: dict[str, Path] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: unreadable shard index ({e})") from None
            for name, file in weight_map.items():
                self.files[name] = directory / file
            for shard in sorted(set(self.files.values())):
                if not shard.is_file():
                    raise CheckpointError(f"{shard}: shard named in {index.name} is missing")
        elif single.is_file():
            for name in self._open(single).keys():
                self.files[name] = single
        else:
            found = sorted(p.name for p in directory.glob("*.safetensors"))
            if not found:
                raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")
            for f in found:
                for name in self._open(directory / f).keys():
                    self.files[name] = directory / f
        self._handles: dict[Path, Any] = {}

    @staticmethod
    def _open(path: Path) -> Any:
        try:
            return safe_open(str(path), framework="pt")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None

    def get(self, name: str) -> torch.Tensor | None:
        path = self.files.get(name)
        if path is None:
            return None
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = self._open(path)
        try:
            return handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot read tensor {name!r} ({e})") from None


def load_hf_decoder(
    directory: str | os.PathLike[str], dtype: torch.dtype | None = None, device: str = "cpu",
    prefix: str = "model.", head_prefix: str = "", config_key: str | None = None,
) -> DecoderLM:
    """Load a Llama/Qwen2 causal LM from a checkpoint directory.

    prefix/head_prefix locate the decoder and lm_head (e.g. "thinker.model." and "thinker." inside a
    Qwen2.5-Omni checkpoint); config_key selects a sub-config (e.g. "thinker_config.text_config").
    dtype defaults to the checkpoint's torch_dtype (float32 when it names none).
    """
    directory = Path(directory)
    raw = read_config(directory)
    sub = raw
    for key in (config_key.split(".") if config_key else []):
        if key not in sub:
            raise CheckpointError(f"{directory}/config.json: no {config_key!r} section")
        sub = sub[key]
    try:
        cfg = DecoderConfig.from_hf_config(sub)
    except ConfigError as e:
        raise CheckpointError(f"{directory}/config.json: {e}") from None
    except KeyError as e:
        raise CheckpointError(f"{directory}/config.json: missing field {e}") from None
    if dtype is None:
        dtype = _dtype_of(sub.get("torch_dtype") or sub.get("dtype") or raw.get("torch_dtype"))
    index = SafetensorsIndex(directory)
    names = list(expected_shapes(cfg))
    bar = tqdm(total=len(names), desc=f"loading {directory.name}", unit="tensor", disable=None, leave=False)

    def get(name: str) -> torch.Tensor | None:
        full = head_prefix + name if name == "lm_head.weight" else prefix + name
        bar.update(1)
        return index.get(full)

    try:
        return build_decoder(cfg, get, dtype, device, str(directory))
    finally:
        bar.close()


def _dtype_of(name: object) -> torch.dtype:
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    return table.get(str(name), torch.float32)
