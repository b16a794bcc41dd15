"""Our decoder against transformers' Qwen3-Omni decoders on tiny random models (float32): the Thinker's MoE
text model (q/k norm, interleaved M-RoPE, sparse and dense layers), the Talker's MoE decoder with a shared
expert, and the dense code predictor (1-D rope). Weights go through our loader from what save_pretrained
writes (the released per-expert key layout, re-prefixed as in the released checkpoint), and from transformers'
fused in-memory expert layout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omni.model.errors import CheckpointError, ConfigError
from omni.model.layers.mlp import SparseMoE
from omni.model.lm.config import PRESETS, DecoderConfig
from omni.model.lm.decode_kernels import REFERENCE_OPS, TRITON_OPS
from omni.model.lm.decoder import DecoderLM
from omni.model.lm.kv_cache import CacheConfig
from omni.model.loaders.hf import SafetensorsIndex, load_hf_decoder
from omni.model.loaders.weights import build_decoder

transformers = pytest.importorskip("transformers")
from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as hf_cfg  # noqa: E402
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as hf  # noqa: E402

SHAPE = dict(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6)
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "interleaved": True}
T = 13


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights of O(1) effect: transformers zero-initialises the router, which would tie every expert."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def _positions(seed: int) -> torch.Tensor:
    """[3, 1, T] positions that differ per axis, so a wrong frequency-to-axis assignment shows."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T) + 3
    return torch.stack([t, t + torch.randint(0, 9, (T,), generator=g), t + torch.randint(0, 13, (T,), generator=g)])[
        :, None
    ]


def _save_prefixed(ref: torch.nn.Module, tmp: Path, prefix: str, extra: dict[str, torch.Tensor]) -> dict[str, Any]:
    """save_pretrained, then the same tensors under `prefix` (the released checkpoint's nesting); returns the
    saved config.json dict."""
    ref.save_pretrained(tmp / "hf")
    with safe_open(str(tmp / "hf" / "model.safetensors"), "pt") as f:
        tensors = {prefix + k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors | extra, str(tmp / "model.safetensors"))
    return json.loads((tmp / "hf" / "config.json").read_text())


def _decode_all(ours: DecoderLM, embeds: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    state = ours.init_state(CacheConfig(sinks=2, window=64, chunk=64))
    steps = [ours(state, inputs_embeds=embeds[:, t : t + 1], positions=pos[..., t : t + 1], logits="none",
                  return_hidden=True).hidden for t in range(embeds.shape[1])]
    return torch.cat([s for s in steps if s is not None], dim=1)


def _thinker(tmp_path: Path) -> tuple[Any, DecoderLM, torch.Tensor]:
    torch.manual_seed(0)
    cfg = hf_cfg.Qwen3OmniMoeTextConfig(**SHAPE, moe_intermediate_size=24, num_experts=6, num_experts_per_tok=3,
                                        norm_topk_prob=True, mlp_only_layers=[1], rope_parameters=MROPE)
    ref = hf.Qwen3OmniMoeThinkerTextModel(cfg).eval()
    _randomise(ref, 1)
    head = torch.randn(SHAPE["vocab_size"], SHAPE["hidden_size"]) / SHAPE["hidden_size"] ** 0.5
    text = _save_prefixed(ref, tmp_path, "thinker.model.", {"thinker.lm_head.weight": head})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_omni_moe",
                                                      "thinker_config": {"text_config": text}}))
    ours = load_hf_decoder(tmp_path, prefix="thinker.model.", head_prefix="thinker.",
                           config_key="thinker_config.text_config")
    return ref, ours, head


def test_thinker_logits_prefill_and_decode_match_transformers(tmp_path: Path) -> None:
    ref, ours, head = _thinker(tmp_path)
    assert ours.cfg.mrope_interleaved and ours.cfg.qk_norm and ours.cfg.num_experts == 6
    assert [isinstance(layer.mlp, SparseMoE) for layer in ours.layers] == [True, False, True]
    ids = torch.randint(0, SHAPE["vocab_size"], (1, T), generator=torch.Generator().manual_seed(2))
    pos = _positions(3)
    with torch.no_grad():
        want_h = ref(input_ids=ids, position_ids=pos).last_hidden_state
    want = want_h @ head.T
    got = ours(ours.init_state(), input_ids=ids, positions=pos, logits="all").logits
    assert got is not None and want.abs().max() > 1.0, "weak test: reference logits are near zero"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    # the positions matter: plain positions give other logits
    plain = ours(ours.init_state(), input_ids=ids, positions=pos[0], logits="all").logits
    assert plain is not None and not torch.allclose(plain, want, atol=1e-3)

    stepped = _decode_all(ours, ours.embed_tokens(ids), pos)
    torch.testing.assert_close(stepped, want_h, rtol=1e-4, atol=1e-4 * want_h.abs().max().item())


@pytest.mark.parametrize("ops", ["reference", "triton"])
def test_thinker_decode_on_the_gpu_step_kernels(tmp_path: Path, ops: str) -> None:
    """The one-token step of omni/model/lm/decode_kernels.py (q/k norm, interleaved rope, MoE MLP) against prefill;
    "triton" runs the Triton launchers (the interpreter on a CPU)."""
    if ops == "triton":
        pytest.importorskip("triton")
        import os

        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("the Triton launchers need TRITON_INTERPRET=1 on a CPU (run with it in the environment)")
    ref, ours, _ = _thinker(tmp_path)
    ids = torch.randint(0, SHAPE["vocab_size"], (1, T), generator=torch.Generator().manual_seed(4))
    pos = _positions(5)
    with torch.no_grad():
        want = ref(input_ids=ids, position_ids=pos).last_hidden_state
    ours.decode_ops = REFERENCE_OPS if ops == "reference" else TRITON_OPS
    got = _decode_all(ours, ours.embed_tokens(ids), pos)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_fused_expert_layout_loads_equal(tmp_path: Path) -> None:
    """transformers' in-memory (fused) expert tensors load to the same model as the released per-expert ones."""
    ref, ours, head = _thinker(tmp_path)
    state = dict(ref.state_dict()) | {"lm_head.weight": head}
    assert "layers.0.mlp.experts.gate_up_proj" in state
    fused = build_decoder(ours.cfg, state.get, torch.float32, "cpu", "in-memory")
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), fused.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    # a missing expert is named
    index = SafetensorsIndex(tmp_path)

    def lacking(name: str) -> torch.Tensor | None:
        return None if name == "layers.2.mlp.experts.4.up_proj.weight" else index.get("thinker.model." + name)

    with pytest.raises(CheckpointError, match=r"layers\.2\.mlp\.experts\.4\.up_proj\.weight"):
        build_decoder(ours.cfg, lacking, torch.float32, "cpu", "x")


def test_talker_moe_with_shared_expert_matches_transformers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = hf_cfg.Qwen3OmniMoeTalkerTextConfig(**SHAPE, moe_intermediate_size=24, num_experts=5,
                                              num_experts_per_tok=2, norm_topk_prob=True,
                                              shared_expert_intermediate_size=36, rope_parameters=MROPE)
    ref = hf.Qwen3OmniMoeTalkerModel(cfg).eval()
    _randomise(ref, 6)
    head = torch.randn(SHAPE["vocab_size"], SHAPE["hidden_size"])
    text = _save_prefixed(ref, tmp_path, "talker.model.", {"talker.codec_head.weight": head})
    ours_cfg = DecoderConfig.from_hf_config(text)
    assert ours_cfg.shared_expert_intermediate_size == 36 and ours_cfg.num_experts == 5
    index = SafetensorsIndex(tmp_path)
    keys = {"embed_tokens.weight": "talker.model.codec_embedding.weight", "lm_head.weight": "talker.codec_head.weight"}
    ours = build_decoder(ours_cfg, lambda n: index.get(keys.get(n, "talker.model." + n)), torch.float32, "cpu",
                         "talker")
    assert all(isinstance(layer.mlp, SparseMoE) and layer.mlp.shared_expert is not None for layer in ours.layers)
    embeds = torch.randn(1, T, SHAPE["hidden_size"], generator=torch.Generator().manual_seed(7))
    pos = _positions(8)
    with torch.no_grad():
        want = ref(inputs_embeds=embeds, position_ids=pos).last_hidden_state
    got = ours(ours.init_state(), inputs_embeds=embeds, positions=pos, logits="none", return_hidden=True).hidden
    tol = 1e-4 * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=tol)
    torch.testing.assert_close(_decode_all(ours, embeds, pos), want, rtol=1e-4, atol=tol)


def test_code_predictor_matches_transformers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = hf_cfg.Qwen3OmniMoeTalkerCodePredictorConfig(**SHAPE, num_code_groups=4,
                                                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    ref = hf.Qwen3OmniMoeTalkerCodePredictorModel(cfg).eval()
    _randomise(ref, 9)
    text = _save_prefixed(ref, tmp_path, "talker.code_predictor.model.",
                          {"talker.code_predictor.lm_head.0.weight": torch.randn(97, 32)})
    ours_cfg = DecoderConfig.from_hf_config(text)
    assert ours_cfg.qk_norm and not ours_cfg.num_experts and ours_cfg.mrope_section is None
    index = SafetensorsIndex(tmp_path)
    # the code predictor has per-group embeddings and heads (the caller's business): the decoder takes
    # embeddings, so its own embed_tokens is a stride-0 placeholder, and one of the heads stands in.
    placeholder = torch.zeros(1, 32).expand(97, 32)

    def get(name: str) -> torch.Tensor | None:
        if name == "embed_tokens.weight":
            return placeholder
        if name == "lm_head.weight":
            return index.get("talker.code_predictor.lm_head.0.weight")
        return index.get("talker.code_predictor.model." + name)

    ours = build_decoder(ours_cfg, get, torch.float32, "cpu", "code predictor")
    embeds = torch.randn(1, T, 32, generator=torch.Generator().manual_seed(10))
    pos = torch.arange(T)[None] + 2
    with torch.no_grad():
        want = ref(inputs_embeds=embeds, position_ids=pos).last_hidden_state
    got = ours(ours.init_state(), inputs_embeds=embeds, positions=pos, logits="none", return_hidden=True).hidden
    tol = 1e-4 * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=tol)
    torch.testing.assert_close(_decode_all(ours, embeds, pos), want, rtol=1e-4, atol=tol)


def test_config_round_trip_and_presets() -> None:
    for name in ("qwen3-omni-30b-a3b-thinker", "qwen3-omni-30b-a3b-talker", "qwen3-omni-code-predictor"):
        cfg = DecoderConfig.from_name(name)
        d = cfg.to_hf_config()
        assert DecoderConfig.from_hf_config(d) == cfg, name
        # transformers reads the same dict to the same shapes
        hf_class = {"qwen3_omni_moe_text": hf_cfg.Qwen3OmniMoeTextConfig,
                    "qwen3_omni_moe_talker_text": hf_cfg.Qwen3OmniMoeTalkerTextConfig,
                    "qwen3_omni_moe_talker_code_predictor": hf_cfg.Qwen3OmniMoeTalkerCodePredictorConfig}
        theirs = hf_class[d["model_type"]](**{k: v for k, v in d.items() if k != "model_type"}).to_dict()
        assert DecoderConfig.from_hf_config(theirs) == cfg, name
    thinker = PRESETS["qwen3-omni-30b-a3b-thinker"]
    assert (thinker.num_layers, thinker.num_experts, thinker.num_experts_per_tok, thinker.head_dim) == (48, 128, 8, 128)
    talker = PRESETS["qwen3-omni-30b-a3b-talker"]
    assert (talker.num_experts_per_tok, talker.moe_intermediate_size, talker.shared_expert_intermediate_size) == \
        (6, 384, 768)
    # the shapes the reference checkpoint lists (shared/reference/qwen_omni.md 2.8)
    with torch.device("meta"):
        lm = DecoderLM(dataclasses.replace(thinker, num_layers=1))
    shapes = {n: tuple(p.shape) for n, p in lm.named_parameters()}
    assert shapes["layers.0.self_attn.qkv_proj.weight"] == (4096 + 2 * 512, 2048)
    assert shapes["layers.0.mlp.gate.weight"] == (128, 2048)
    assert shapes["layers.0.mlp.experts.gate_up_proj"] == (128, 2 * 768, 2048)


def test_unsupported_paths_are_refused(tmp_path: Path) -> None:
    _, ours, _ = _thinker(tmp_path)
    from omni.kernels.cpu import library

    lib = library()
    if lib is not None:
        assert not ours.enable_fused_decode(lib)  # the C step has no q/k norm or experts
    # (int8/int4 of mixture-of-experts decoders is supported: tests/model/test_qwen3_quant.py)


def test_wrapped_cache_eager_and_step_kernels_agree(tmp_path: Path) -> None:
    """Once the ring wraps, sinks are scored by the (normed) query rotated to shifted positions: the eager
    layer loop and the one-token step kernels (reference ops) must agree there too."""
    _, ours, _ = _thinker(tmp_path)
    ids = torch.randint(0, SHAPE["vocab_size"], (1, T), generator=torch.Generator().manual_seed(11))
    pos = _positions(12)
    embeds = ours.embed_tokens(ids)
    outs = []
    for ops in (None, REFERENCE_OPS):
        ours.decode_ops = ops
        state = ours.init_state(CacheConfig(sinks=2, window=5, chunk=5))
        steps = [ours(state, inputs_embeds=embeds[:, t : t + 1], positions=pos[..., t : t + 1], logits="none",
                      return_hidden=True).hidden for t in range(T)]
        outs.append(torch.cat([s for s in steps if s is not None], dim=1))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_config_errors() -> None:
    base = {"model_type": "qwen3_omni_moe_text", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 40,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 2, 2]}}
    cfg = DecoderConfig.from_hf_config(base)
    assert cfg.mrope_interleaved and cfg.mrope_section == (4, 2, 2)  # transformers always interleaves here
    with pytest.raises(ConfigError, match="mrope_section"):  # the released default [24, 20, 20] needs head_dim 128
        DecoderConfig.from_hf_config({k: v for k, v in base.items() if k != "rope_parameters"})
    with pytest.raises(ConfigError, match="attention_bias"):
        DecoderConfig.from_hf_config(base | {"attention_bias": True})
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        DecoderConfig.from_hf_config(base | {"num_experts_per_tok": 5})
