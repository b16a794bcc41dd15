"""Decoder-LM configuration: a dataclass with named presets, read from and written to config.json.

One config covers the Llama and Qwen2 families (what Qwen2.5-Omni's Thinker and Talker are built on):
RMSNorm, grouped-query attention, SwiGLU, optional q/k/v bias, optional tied embeddings, RoPE with a
configurable theta and, for the Omni models, multimodal RoPE with three position axes. The Qwen3 family
(Qwen3-Omni's Thinker, Talker and code predictor) adds per-head q/k RMSNorm, interleaved M-RoPE and
mixture-of-experts MLPs (an optional shared expert with a sigmoid gate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omni.model.errors import ConfigError
from omni.model.hf_config import hf_fields, preset

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "llama",
}
# Qwen3-Omni's decoder configs (transformers `Qwen3OmniMoeTextConfig`, `Qwen3OmniMoeTalkerTextConfig`,
# `Qwen3OmniMoeTalkerCodePredictorConfig`), read by model_type: their rotary embedding is always the
# interleaved three-axis M-RoPE (default sections [24, 20, 20]) except the code predictor's plain RoPE.
QWEN3_OMNI_TYPES = {
    "qwen3_omni_moe_text": True,  # model_type -> uses interleaved M-RoPE
    "qwen3_omni_moe_talker_text": True,
    "qwen3_omni_moe_talker_code_predictor": False,
}
_QWEN3_OMNI_MROPE = (24, 20, 20)


@dataclass
class DecoderConfig:
    """Shape and numerics of a decoder-only transformer LM.

    `mrope_section` splits the rotary frequencies (head_dim // 2 of them) into consecutive blocks that
    take their angle from the temporal, height and width position axes (Qwen2.5-Omni: [16, 24, 24]).
    With three equal axes it reduces exactly to plain RoPE.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = 0  # 0: hidden_size // num_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    mrope_section: tuple[int, ...] | None = None
    architecture: str = "llama"  # "llama", "qwen2" or "qwen3_moe": names the family the weights come from
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    # Qwen3 family (Qwen3-Omni's Thinker, Talker and code predictor, section 2 of the reference):
    qk_norm: bool = False  # per-head RMSNorm on q and k before rotary
    mrope_interleaved: bool = False  # the T/H/W frequency sections are interleaved, not consecutive
    num_experts: int = 0  # 0: dense SwiGLU MLP in every layer
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False  # renormalise the top-k router probabilities to sum to 1
    shared_expert_intermediate_size: int = 0  # 0: no shared expert (a shared expert has a sigmoid gate)
    decoder_sparse_step: int = 1  # layer i is sparse when (i + 1) % step == 0 and i not in mlp_only_layers
    mlp_only_layers: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.mrope_section is not None:
            self.mrope_section = tuple(int(s) for s in self.mrope_section)
            if sum(self.mrope_section) != self.head_dim // 2:
                raise ConfigError(
                    f"mrope_section {list(self.mrope_section)} must sum to head_dim // 2 = {self.head_dim // 2}"
                )
        if self.mrope_interleaved and self.mrope_section is None:
            raise ConfigError("mrope_interleaved needs mrope_section")
        if self.num_experts and self.moe_intermediate_size <= 0:
            raise ConfigError(f"a mixture-of-experts config needs moe_intermediate_size > 0, "
                              f"got {self.moe_intermediate_size}")
        if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(
                f"num_experts_per_tok must be in 1..num_experts ({self.num_experts}), got {self.num_experts_per_tok}"
            )

    def is_sparse_layer(self, i: int) -> bool:
        """Whether decoder layer `i` has a mixture-of-experts MLP (the transformers Qwen3-MoE rule)."""
        return (
            self.num_experts > 0
            and i not in self.mlp_only_layers
            and (i + 1) % max(self.decoder_sparse_step, 1) == 0
        )

    # ---- presets -------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str) -> DecoderConfig:
        """A named preset (real model shapes, for random-weight benchmarks and tests)."""
        return preset(PRESETS, name, "decoder")

    # ---- config.json -----------------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> DecoderConfig:
        """Read a Hugging Face config.json dict of a Llama- or Qwen2-family causal LM, or one of Qwen3-Omni's
        decoder sub-configs (thinker text, talker text, code predictor; see QWEN3_OMNI_TYPES)."""
        archs = cfg.get("architectures") or []
        model_type = cfg.get("model_type", "")
        if model_type in QWEN3_OMNI_TYPES:
            return cls._from_qwen3_omni(cfg)
        family = None
        for a in archs:
            family = family or SUPPORTED_ARCHITECTURES.get(a)
        if family is None and model_type in ("llama", "qwen2", "mistral"):
            family = "qwen2" if model_type == "qwen2" else "llama"
        if family is None:
            raise ConfigError(
                f"unsupported architecture {archs or model_type!r}; supported: "
                f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        if cfg.get("mlp_bias"):
            raise ConfigError("mlp_bias=true is not supported (no released Llama/Qwen2 model uses it)")
        rope = _rope_params(cfg)
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
        names = {
            "vocab_size": "vocab_size",
            "hidden_size": "hidden_size",
            "intermediate_size": "intermediate_size",
            "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads",
            "num_kv_heads": "num_key_value_heads",
            "head_dim": "head_dim",
            "rms_norm_eps": "rms_norm_eps",
            "max_position_embeddings": "max_position_embeddings",
            "tie_word_embeddings": "tie_word_embeddings",
            "bos_token_id": "bos_token_id",
        }
        kw = hf_fields(cls, cfg, names, "config.json", required=tuple(names)[:5])
        kw.setdefault("num_kv_heads", kw["num_heads"])
        if "rope_theta" in rope:
            kw["rope_theta"] = float(rope["rope_theta"])
        if rope.get("mrope_section"):
            kw["mrope_section"] = tuple(rope["mrope_section"])
        # Qwen2 always has q/k/v biases; Llama says so in attention_bias.
        kw["qkv_bias"] = True if family == "qwen2" else bool(cfg.get("attention_bias", False))
        return cls(**kw, architecture=family, eos_token_ids=eos_ids)

    @classmethod
    def _from_qwen3_omni(cls, cfg: dict[str, Any]) -> DecoderConfig:
        model_type = cfg["model_type"]
        rope = _rope_params(cfg)
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
        names = {
            "vocab_size": "vocab_size", "hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
            "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
            "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim", "rms_norm_eps": "rms_norm_eps",
            "max_position_embeddings": "max_position_embeddings", "tie_word_embeddings": "tie_word_embeddings",
            "bos_token_id": "bos_token_id",
            "num_experts_per_tok": "num_experts_per_tok", "moe_intermediate_size": "moe_intermediate_size",
            "norm_topk_prob": "norm_topk_prob", "shared_expert_intermediate_size": "shared_expert_intermediate_size",
            "decoder_sparse_step": "decoder_sparse_step",
        }
        kw = hf_fields(cls, cfg, names, "config.json", required=tuple(names)[:5])
        kw.setdefault("num_kv_heads", kw["num_heads"])
        if cfg.get("attention_bias"):
            raise ConfigError("attention_bias=true is not supported for Qwen3 decoders (the released models have none)")
        if cfg.get("sliding_window") is not None and "sliding_attention" in (cfg.get("layer_types") or []):
            raise ConfigError("sliding-window attention layers are not supported")
        experts = cfg.get("num_experts", cfg.get("num_local_experts", 0))
        if model_type != "qwen3_omni_moe_talker_code_predictor" and experts:
            kw["num_experts"] = int(experts)
            kw["mlp_only_layers"] = tuple(int(i) for i in cfg.get("mlp_only_layers") or ())
        else:  # the code predictor is dense
            for key in ("num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
                        "shared_expert_intermediate_size", "decoder_sparse_step"):
                kw.pop(key, None)
        if "rope_theta" in rope:
            kw["rope_theta"] = float(rope["rope_theta"])
        if QWEN3_OMNI_TYPES[model_type]:  # transformers interleaves whatever the config's "interleaved" says
            kw["mrope_section"] = tuple(rope.get("mrope_section") or _QWEN3_OMNI_MROPE)
            kw["mrope_interleaved"] = True
        return cls(**kw, architecture="qwen3_moe", qk_norm=True, eos_token_ids=eos_ids)

    def to_hf_config(self) -> dict[str, Any]:
        """The config.json dict that `from_hf_config` reads back to an equal config."""
        if self.architecture == "qwen3_moe":
            return self._to_qwen3_omni()
        arch = "Qwen2ForCausalLM" if self.architecture == "qwen2" else "LlamaForCausalLM"
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.mrope_section:
            rope["mrope_section"] = list(self.mrope_section)
        out: dict[str, Any] = {
            "architectures": [arch],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
        }
        if self.architecture == "llama":
            out["attention_bias"] = self.qkv_bias
        if self.bos_token_id is not None:
            out["bos_token_id"] = self.bos_token_id
        if self.eos_token_ids:
            out["eos_token_id"] = list(self.eos_token_ids)
        return out


    def _to_qwen3_omni(self) -> dict[str, Any]:
        if not self.qk_norm or (self.mrope_section is not None) != self.mrope_interleaved:
            raise ConfigError("a qwen3_moe config.json has q/k norm and, with M-RoPE, interleaved sections")
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.mrope_section:
            rope |= {"mrope_section": list(self.mrope_section), "interleaved": True}
            model_type = "qwen3_omni_moe_talker_text" if self.shared_expert_intermediate_size else "qwen3_omni_moe_text"
        else:
            if self.num_experts:
                raise ConfigError("Qwen3-Omni's mixture-of-experts decoders use interleaved M-RoPE")
            model_type = "qwen3_omni_moe_talker_code_predictor"
        out: dict[str, Any] = {
            "model_type": model_type, "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps, "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings, "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu", "attention_bias": False,
        }
        if self.num_experts:
            out |= {"num_experts": self.num_experts, "num_experts_per_tok": self.num_experts_per_tok,
                    "moe_intermediate_size": self.moe_intermediate_size, "norm_topk_prob": self.norm_topk_prob,
                    "decoder_sparse_step": self.decoder_sparse_step, "mlp_only_layers": list(self.mlp_only_layers),
                    "shared_expert_intermediate_size": self.shared_expert_intermediate_size}
        if self.bos_token_id is not None:
            out["bos_token_id"] = self.bos_token_id
        if self.eos_token_ids:
            out["eos_token_id"] = list(self.eos_token_ids)
        return out


def _rope_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """Merge the rope settings of transformers 4 (rope_theta, rope_scaling) and 5 (rope_parameters)."""
    rope: dict[str, Any] = {}
    if "rope_theta" in cfg:
        rope["rope_theta"] = cfg["rope_theta"]
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(cfg.get(key), dict):
            rope.update(cfg[key])
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "mrope", None):
        raise ConfigError(f"rope scaling type {kind!r} is not supported (only plain and multimodal RoPE)")
    return rope


PRESETS: dict[str, DecoderConfig] = {
    # HuggingFaceTB/SmolLM2-135M-Instruct: the embedded default on CPU machines.
    "smollm2-135m": DecoderConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
        num_kv_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
        tie_word_embeddings=True, architecture="llama", bos_token_id=1, eos_token_ids=(2,),
    ),
    # Qwen2.5-Omni Thinker LLMs (shared/reference/qwen_omni.md section 1.1).
    "qwen2.5-omni-7b": DecoderConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
        num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
        qkv_bias=True, mrope_section=(16, 24, 24), architecture="qwen2",
    ),
    "qwen2.5-omni-3b": DecoderConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16,
        num_kv_heads=2, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
        qkv_bias=True, tie_word_embeddings=True, mrope_section=(16, 24, 24), architecture="qwen2",
    ),
    # Qwen2.5-Omni-7B Talker decoder (section 1.5): 24 layers, d 896, 12/4 heads of 128, codec vocab 8448.
    "qwen2.5-omni-7b-talker": DecoderConfig(
        vocab_size=8448, hidden_size=896, intermediate_size=18944, num_layers=24, num_heads=12,
        num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
        qkv_bias=True, mrope_section=(16, 24, 24), architecture="qwen2",
    ),
    # Qwen3-Omni-30B-A3B (section 2.1 / 2.5 of the reference): Thinker MoE (128 experts top-8, FFN 768 each),
    # Talker MoE (top-6, FFN 384, shared expert 768), dense code predictor.
    "qwen3-omni-30b-a3b-thinker": DecoderConfig(
        vocab_size=152064, hidden_size=2048, intermediate_size=768, num_layers=48, num_heads=32,
        num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=65536,
        mrope_section=(24, 20, 20), mrope_interleaved=True, qk_norm=True, architecture="qwen3_moe",
        num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
    ),
    "qwen3-omni-30b-a3b-talker": DecoderConfig(
        vocab_size=3072, hidden_size=1024, intermediate_size=2048, num_layers=20, num_heads=16,
        num_kv_heads=2, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=65536,
        mrope_section=(24, 20, 20), mrope_interleaved=True, qk_norm=True, architecture="qwen3_moe",
        num_experts=128, num_experts_per_tok=6, moe_intermediate_size=384, norm_topk_prob=True,
        shared_expert_intermediate_size=768,
    ),
    "qwen3-omni-code-predictor": DecoderConfig(
        vocab_size=2048, hidden_size=1024, intermediate_size=3072, num_layers=5, num_heads=16,
        num_kv_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=65536,
        qk_norm=True, architecture="qwen3_moe",
    ),
    # A tiny shape for tests and quick experiments.
    "tiny": DecoderConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
        rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=512, architecture="llama",
    ),
}
