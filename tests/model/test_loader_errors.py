"""Bad checkpoints and bad input give clear errors that name what was wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from omni.model.errors import CheckpointError
from omni.model.loaders import load_lm
from omni.model.loaders.hf import load_hf_decoder
from tests.model.tiny_hf import make_tiny_hf


def test_missing_path() -> None:
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_lm("/nonexistent/model")


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf_decoder(tmp_path)


def test_truncated_safetensors_names_the_file(tmp_path: Path) -> None:
    _, path = make_tiny_hf(tmp_path)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-5000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_hf_decoder(path)


def test_missing_shard_names_the_shard(tmp_path: Path) -> None:
    _, path = make_tiny_hf(tmp_path, "qwen2", shard="40KB")
    shard = sorted(path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        load_hf_decoder(path)


def test_wrong_architecture(tmp_path: Path) -> None:
    _, path = make_tiny_hf(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["BertModel"], "bert"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported architecture"):
        load_hf_decoder(path)


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    _, path = make_tiny_hf(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 80
    (path / "config.json").write_text(json.dumps(cfg))
    want = r"layers\.0\.mlp\.gate_proj\.weight.*shape \[96, 48\], expected \[80, 48\]"
    with pytest.raises(CheckpointError, match=want):
        load_hf_decoder(path)


def test_missing_tensor_names_it(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _, path = make_tiny_hf(tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn\.k_proj\.weight.*missing"):
        load_hf_decoder(path)


def test_checkpoint_dtype_is_kept_and_can_be_overridden(tmp_path: Path) -> None:
    ref, path = make_tiny_hf(tmp_path)
    ref.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    shutil.rmtree(path)
    assert load_hf_decoder(tmp_path / "bf16").dtype == torch.bfloat16
    assert load_hf_decoder(tmp_path / "bf16", dtype=torch.float32).dtype == torch.float32


def test_empty_input_and_out_of_range_tokens(tmp_path: Path) -> None:
    _, path = make_tiny_hf(tmp_path)
    m = load_hf_decoder(path)
    with pytest.raises(ValueError, match="empty input"):
        m(m.init_state(), input_ids=torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        m(m.init_state(), input_ids=torch.tensor([[5, 97]]))
