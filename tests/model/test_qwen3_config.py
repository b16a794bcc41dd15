"""Qwen3-Omni config.json, family detection and the released checkpoint layout, on a tiny transformers checkpoint."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from omni.model.errors import CheckpointError, ConfigError
from omni.model.loaders.family import QWEN2_5_OMNI, QWEN3_OMNI_MOE, detect_family, family_of_config
from omni.model.loaders.hf import SafetensorsIndex, read_config
from omni.model.qwen3.config import PRESETS, Qwen3OmniConfig
from tests.model.qwen3_tiny import tiny_config_dict


@pytest.fixture(scope="module")
def raw(qwen3_tiny_dir: Path) -> dict[str, Any]:
    return read_config(qwen3_tiny_dir)


@pytest.fixture(scope="module")
def hf(qwen3_tiny_dir: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(qwen3_tiny_dir)


def test_family_of_the_tiny_checkpoints(qwen3_tiny_dir: Path, tmp_path: Path) -> None:
    from tests.model.omni_tiny import build_model

    assert detect_family(qwen3_tiny_dir) == QWEN3_OMNI_MOE
    build_model(with_talker=False).save_pretrained(tmp_path)  # a Qwen2.5-Omni directory as transformers writes it
    assert detect_family(tmp_path) == QWEN2_5_OMNI


@pytest.mark.parametrize(
    ("config", "family"),
    [
        ({"architectures": ["Qwen3OmniMoeForConditionalGeneration"]}, QWEN3_OMNI_MOE),
        ({"model_type": "qwen3_omni_moe"}, QWEN3_OMNI_MOE),
        ({"architectures": ["Qwen2_5OmniModel"], "model_type": "qwen2_5_omni"}, QWEN2_5_OMNI),
        ({"model_type": "qwen2_5_omni_thinker"}, QWEN2_5_OMNI),
    ],
)
def test_family_by_architecture_or_model_type(config: dict[str, Any], family: str) -> None:
    assert family_of_config(config) == family


def test_unsupported_family_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="LlamaForCausalLM.*supported: Qwen2.5-Omni.*Qwen3-Omni"):
        detect_family(tmp_path)
    with pytest.raises(CheckpointError, match="disagree"):
        family_of_config({"architectures": ["Qwen3OmniMoeForConditionalGeneration"], "model_type": "qwen2_5_omni"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        detect_family(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        detect_family(tmp_path / "absent")


def test_config_agrees_with_transformers(raw: dict[str, Any], hf: Any) -> None:
    cfg = Qwen3OmniConfig.from_hf_config(raw)
    th, hth = cfg.thinker, hf.thinker_config
    for name in ("audio_token_id", "image_token_id", "video_token_id", "audio_start_token_id",
                 "position_id_per_seconds", "user_token_id"):
        assert getattr(th, name) == getattr(hth, name), name
    assert th.vision_start_token_id == hth.vision_start_token_id
    assert th.vision_end_token_id == hth.vision_end_token_id and th.audio_end_token_id == hth.audio_end_token_id
    assert th.hidden_size == hth.text_config.hidden_size and th.num_layers == hth.text_config.num_hidden_layers
    assert th.text_config["num_experts"] == hth.text_config.num_experts
    assert th.n_window == hth.audio_config.n_window
    assert th.spatial_merge_size == hth.vision_config.spatial_merge_size
    tk, htk = cfg.talker, hf.talker_config
    assert tk is not None
    for name in tk.FIELDS:
        assert getattr(tk, name) == getattr(htk, name), name
    assert tk.hidden_size == htk.text_config.hidden_size and tk.codec_vocab_size == htk.text_config.vocab_size
    assert tk.speaker("Ethan") == htk.speaker_id["ethan"]
    for name in Qwen3OmniConfig.IDS:
        assert getattr(cfg, name) == getattr(hf, name), name
    assert cfg.code2wav_config is not None
    assert cfg.code2wav_config["num_quantizers"] == hf.code2wav_config.num_quantizers == tk.num_code_groups
    assert cfg.speaks and cfg.thinker.rope.style == "qwen3"


def test_round_trip(raw: dict[str, Any]) -> None:
    cfg = Qwen3OmniConfig.from_hf_config(raw)
    again = Qwen3OmniConfig.from_hf_config(json.loads(json.dumps(cfg.to_hf_config())))
    assert again == cfg
    for name in PRESETS:
        preset = Qwen3OmniConfig.from_name(name)
        assert Qwen3OmniConfig.from_hf_config(json.loads(json.dumps(preset.to_hf_config()))) == preset


def test_presets_have_the_released_numbers_and_build_in_transformers() -> None:
    from transformers import Qwen3OmniMoeConfig

    cfg = Qwen3OmniConfig.from_name("qwen3-omni-30b-a3b")
    th, tk = cfg.thinker, cfg.talker
    assert tk is not None and cfg.speaks
    assert (th.hidden_size, th.num_layers, th.position_id_per_seconds, th.audio_token_id) == (2048, 48, 13, 151675)
    assert (th.text_config["num_experts"], th.text_config["num_experts_per_tok"]) == (128, 8)
    assert (tk.text_config["num_experts_per_tok"], tk.text_config["shared_expert_intermediate_size"]) == (6, 768)
    assert (tk.accept_hidden_layer, tk.num_code_groups, tk.codec_eos_token_id) == (24, 16, 2150)
    assert tk.speaker_id == {"chelsie": 2301, "ethan": 2302, "aiden": 2303}
    assert (cfg.tts_pad_token_id, cfg.assistant_token_id) == (151671, 77091)
    ref = Qwen3OmniMoeConfig(**cfg.to_hf_config())  # transformers accepts the preset as a config.json
    assert ref.thinker_config.text_config.num_experts == 128
    assert ref.talker_config.text_config.num_experts_per_tok == 6 and ref.talker_config.text_config.norm_topk_prob
    assert ref.thinker_config.vision_config.deepstack_visual_indexes == [8, 16, 24]
    thinking = Qwen3OmniConfig.from_name("qwen3-omni-30b-a3b-thinking")
    assert thinking.talker is None and not thinking.speaks
    with pytest.raises(ConfigError, match="unknown Qwen3-Omni preset"):
        Qwen3OmniConfig.from_name("qwen3-omni-7b")


def _without(raw: dict[str, Any], *path: str) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    section = out
    for key in path[:-1]:
        section = section[key]
    del section[path[-1]]
    return out


@pytest.mark.parametrize(
    "path",
    [
        ("thinker_config", "audio_token_id"),
        ("thinker_config", "position_id_per_seconds"),
        ("thinker_config", "vision_end_token_id"),
        ("thinker_config", "audio_config"),
        ("thinker_config", "text_config", "hidden_size"),
        ("talker_config", "speaker_id"),
        ("talker_config", "accept_hidden_layer"),
        ("tts_bos_token_id",),
        ("thinker_config",),
    ],
    ids=lambda p: ".".join(p),
)
def test_missing_keys_are_named(path: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match=repr(path[-1])):
        Qwen3OmniConfig.from_hf_config(_without(tiny_config_dict(), *path))


def test_inconsistent_parts_are_rejected() -> None:
    raw = tiny_config_dict()
    raw["talker_config"]["accept_hidden_layer"] = 9
    with pytest.raises(ConfigError, match="accept_hidden_layer 9 is outside 0..2"):
        Qwen3OmniConfig.from_hf_config(raw)
    raw = tiny_config_dict()
    raw["code2wav_config"]["num_quantizers"] = 8
    with pytest.raises(ConfigError, match="num_quantizers 8 != talker_config.num_code_groups 4"):
        Qwen3OmniConfig.from_hf_config(raw)
    raw = tiny_config_dict()
    raw["talker_config"]["thinker_hidden_size"] = 64
    with pytest.raises(ConfigError, match="thinker_hidden_size 64"):
        Qwen3OmniConfig.from_hf_config(raw)
    cfg = Qwen3OmniConfig.from_hf_config(tiny_config_dict())
    assert cfg.talker is not None
    with pytest.raises(ConfigError, match="unknown speaker 'Serena'; this checkpoint has aiden, chelsie, ethan"):
        cfg.talker.speaker("Serena")


def test_tiny_checkpoint_is_in_the_released_layout(qwen3_tiny_dir: Path, raw: dict[str, Any]) -> None:
    """Sharded with an index, per-expert MoE weights, every part under its released prefix (section 2.8)."""
    index = json.loads((qwen3_tiny_dir / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    files = SafetensorsIndex(qwen3_tiny_dir).files
    assert set(files) == set(index["weight_map"])
    names = set(files)
    assert not [n for n in names if n.endswith(("gate_up_proj", "experts.down_proj"))]
    experts = raw["thinker_config"]["text_config"]["num_experts"]
    for part in ("thinker", "talker"):
        for e in range(experts):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                assert f"{part}.model.layers.1.mlp.experts.{e}.{proj}.weight" in names
    for name in (
        "thinker.model.embed_tokens.weight",
        "thinker.lm_head.weight",
        "thinker.model.layers.0.self_attn.q_norm.weight",
        "thinker.model.layers.0.mlp.gate.weight",
        "thinker.audio_tower.conv_out.weight",
        "thinker.audio_tower.proj2.weight",
        "thinker.visual.pos_embed.weight",
        "thinker.visual.merger_list.1.ln_q.weight",
        "talker.model.codec_embedding.weight",
        "talker.codec_head.weight",
        "talker.model.layers.0.mlp.shared_expert.gate_proj.weight",
        "talker.model.layers.0.mlp.shared_expert_gate.weight",
        "talker.text_projection.linear_fc1.weight",
        "talker.hidden_projection.linear_fc2.bias",
        "talker.code_predictor.model.codec_embedding.2.weight",
        "talker.code_predictor.lm_head.2.weight",
        "code2wav.code_embedding.weight",
        "code2wav.pre_transformer.layers.0.self_attn_layer_scale.scale",
    ):
        assert name in names, name


def test_per_expert_tensors_on_disk_are_transformers_fused_experts(qwen3_tiny_dir: Path) -> None:
    """What a loader reads per expert is the reference's fused parameter: gate_up_proj[e] = [gate; up]."""
    import torch

    from tests.model.qwen3_tiny import build_model

    model = build_model()  # the same seed as the fixture: the same weights
    index = SafetensorsIndex(qwen3_tiny_dir)
    # in memory transformers nests the decoder as thinker.model.language_model; on disk it is thinker.model
    experts = model.thinker.get_submodule("model.language_model.layers.1.mlp.experts")
    inter = experts.gate_up_proj.shape[1] // 2
    for e in range(experts.gate_up_proj.shape[0]):
        prefix = f"thinker.model.layers.1.mlp.experts.{e}."
        assert torch.equal(index.get(prefix + "gate_proj.weight"), experts.gate_up_proj[e, :inter].detach())
        assert torch.equal(index.get(prefix + "up_proj.weight"), experts.gate_up_proj[e, inter:].detach())
        assert torch.equal(index.get(prefix + "down_proj.weight"), experts.down_proj[e].detach())


def test_unfuse_experts_rewrites_a_fused_checkpoint(tmp_path: Path) -> None:
    """The fixture's safety net for a transformers that writes fused experts: rewritten to the released names."""
    import torch
    from safetensors.torch import save_file

    from tests.model.qwen3_tiny import unfuse_experts

    gate_up, down, other = torch.randn(3, 8, 5), torch.randn(3, 5, 4), torch.randn(2)
    save_file({"m.layers.0.mlp.experts.gate_up_proj": gate_up, "m.layers.0.mlp.experts.down_proj": down},
              str(tmp_path / "a.safetensors"))
    save_file({"m.norm.weight": other}, str(tmp_path / "b.safetensors"))
    weight_map = {"m.layers.0.mlp.experts.gate_up_proj": "a.safetensors",
                  "m.layers.0.mlp.experts.down_proj": "a.safetensors", "m.norm.weight": "b.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    unfuse_experts(tmp_path)
    index = SafetensorsIndex(tmp_path)
    assert len(index.files) == 3 * 3 + 1
    for e in range(3):
        assert torch.equal(index.get(f"m.layers.0.mlp.experts.{e}.gate_proj.weight"), gate_up[e, :4])
        assert torch.equal(index.get(f"m.layers.0.mlp.experts.{e}.up_proj.weight"), gate_up[e, 4:])
        assert torch.equal(index.get(f"m.layers.0.mlp.experts.{e}.down_proj.weight"), down[e])
    assert torch.equal(index.get("m.norm.weight"), other)


def test_the_qwen2_5_thinker_loader_names_a_qwen3_directory(qwen3_tiny_dir: Path) -> None:
    from omni.model.loaders.omni import load_thinker_model

    with pytest.raises(CheckpointError, match="a Qwen3-Omni checkpoint; this loader reads Qwen2.5-Omni"):
        load_thinker_model(qwen3_tiny_dir)
