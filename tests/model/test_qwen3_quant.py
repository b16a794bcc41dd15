"""`--quant int8|int4` for Qwen3-Omni (omni/model/qwen3/loader.py `quantize_qwen3`): the Thinker's and the Talker's
decoders (attention projections, expert stacks, the Talker's shared experts; its code predictor's projections)
are replaced by weight-only quantised layers, their logits stay close to float, and the mixture-of-experts layers
run the grouped expert path on the quantised weights.

Bounds are relative Frobenius errors of the logits on the tiny random checkpoint, measured at 0.009 / 0.014
(Thinker / Talker codebook 0 + code predictor, int8) and 0.11 / 0.16 (int4: groups of 32 on the tiny 32-wide
inputs; the 16-wide expert down stacks have no int4 group and stay float); the bounds leave 2-3x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

import omni.kernels.moe_matmul as moe
from omni.model.layers.mlp import Experts, SparseMoE
from omni.model.layers.quant_linear import GroupInt4Linear, Int8Linear, QuantExperts
from omni.model.lm.decoder import DecoderLM
from omni.model.qwen3.loader import LoadedQwen3, load_qwen3, quantize_qwen3
from omni.model.qwen3.speech import Qwen3SpeechModels, load_qwen3_speech
from omni.model.qwen3.talker import GREEDY

BOUND = {"int8": 0.04, "int4": 0.35}


def _load(directory: Path) -> tuple[LoadedQwen3, Qwen3SpeechModels]:
    q = load_qwen3(directory, dtype=torch.float32)
    return q, load_qwen3_speech(directory, torch.float32, index=q.index)


@torch.inference_mode()
def _thinker_logits(q: LoadedQwen3) -> torch.Tensor:
    p = q.prompt
    ids = torch.tensor([p.turn_start("user") + p.text("Hello there, how are you today?") + p.generation_prompt()])
    return q.model.lm(q.model.lm.init_state(None), input_ids=ids).logits[0]


@torch.inference_mode()
def _talker_logits(speech: Qwen3SpeechModels) -> torch.Tensor:
    """Codebook-0 logits of the first frame, then the code predictor's logits for codebook 1 of that frame (both
    from the same inputs whatever was quantised: no chosen code feeds them)."""
    t, cfg = speech.talker, speech.config
    g = torch.Generator().manual_seed(0)
    E = speech.talker_config.thinker_hidden_size
    texts = t.texts(torch.randn(300, E, generator=g), cfg.tts_pad_token_id, cfg.tts_bos_token_id,
                    cfg.tts_eos_token_id)
    state = t.init_state(texts, speech.talker_config.speaker("ethan"), sampling=GREEDY, predictor=GREEDY)
    t.feed_user(state, t.user_slots(torch.randn(6, E, generator=g), torch.randn(6, E, generator=g), None))
    t.begin_reply(state, torch.randn(3, E, generator=g), torch.randn(E, generator=g))
    assert state.logits is not None and state.hidden is not None
    c0 = t.decoder.embed_tokens(torch.tensor([3]))[None]
    out = t.predictor(t.predictor.init_state(None), inputs_embeds=torch.cat([state.hidden, c0], dim=1),
                      logits="none", return_hidden=True)
    assert out.hidden is not None
    return torch.cat([state.logits[0], t.heads[0](out.hidden[0, -1])])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _moe_layers(lm: DecoderLM) -> list[SparseMoE]:
    return [layer.mlp for layer in lm.layers if isinstance(layer.mlp, SparseMoE)]  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantised_logits_stay_close_to_float(qwen3_tiny_dir: Path, kind: str) -> None:
    q, speech = _load(qwen3_tiny_dir)
    want_thinker, want_talker = _thinker_logits(q), _talker_logits(speech)
    replaced = quantize_qwen3(q.model, speech.talker, kind)
    got_thinker, got_talker = _thinker_logits(q), _talker_logits(speech)
    err_thinker, err_talker = _rel(got_thinker, want_thinker), _rel(got_talker, want_talker)
    assert err_thinker < BOUND[kind] and err_talker < BOUND[kind], (err_thinker, err_talker)
    assert err_thinker > 1e-4 and err_talker > 1e-4, "the weights did not change: nothing was quantised"
    lms = [q.model.lm, speech.talker.decoder, speech.talker.predictor]
    quant = Int8Linear if kind == "int8" else GroupInt4Linear
    layers = [layer for lm in lms for layer in lm.layers]  # type: ignore[union-attr]
    assert all(isinstance(layer.self_attn.qkv_proj, quant) and isinstance(layer.self_attn.o_proj, quant)
               for layer in layers)
    moes = _moe_layers(q.model.lm) + _moe_layers(speech.talker.decoder)
    assert moes and all(isinstance(m.experts, QuantExperts) for m in moes)
    assert all(isinstance(m.shared_expert.gate_up_proj, quant) for m in _moe_layers(speech.talker.decoder)
               if m.shared_expert is not None)
    assert replaced >= 2 * len(layers) + len(moes)
    with pytest.raises(ValueError, match="already"):
        quantize_qwen3(q.model, None, kind)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_grouped_moe_path_reads_the_quantised_weights(qwen3_tiny_dir: Path, kind: str) -> None:
    """Every expert matmul of a quantised forward goes through the grouped matmul with int8 codes (int8), or
    through int4_matmul for the stacks int4 covers; no float expert stack is left behind."""
    q, speech = _load(qwen3_tiny_dir)
    quantize_qwen3(q.model, speech.talker, kind)
    for m in _moe_layers(q.model.lm) + _moe_layers(speech.talker.decoder):
        assert not isinstance(m.experts, Experts)
        assert not any(p.dim() == 3 for p in m.parameters()), "a float expert stack is still a parameter"
    seen: list[Any] = []
    grouped, int4 = moe.grouped_matmul, moe.int4_matmul

    def rec_grouped(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, scale: Any = None) -> Any:
        seen.append(("grouped", w.dtype, scale is not None))
        return grouped(x, w, offsets, scale)

    def rec_int4(x: torch.Tensor, *a: Any, **k: Any) -> Any:
        seen.append(("int4",))
        return int4(x, *a, **k)

    with mock.patch.object(moe, "grouped_matmul", rec_grouped), mock.patch.object(moe, "int4_matmul", rec_int4):
        _thinker_logits(q)
    n_layers = len(_moe_layers(q.model.lm))
    if kind == "int8":
        assert seen == [("grouped", torch.int8, True)] * (2 * n_layers)
    else:  # gate_up (32 wide: int4 groups of 32) per expert with tokens; down (16 wide) stays a float stack
        assert seen and all(s == ("int4",) for s in seen)
        experts = _moe_layers(q.model.lm)[0].experts
        assert isinstance(experts, QuantExperts)
        assert isinstance(experts.stack("gate_up"), moe.Int4ExpertWeights)
        assert isinstance(experts.stack("down"), torch.Tensor)
