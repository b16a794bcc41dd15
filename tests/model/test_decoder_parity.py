"""Our decoder against transformers on tiny random Llama and Qwen2 checkpoints (fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omni.model.lm.kv_cache import CacheConfig
from omni.model.loaders.hf import load_hf_decoder
from tests.model.tiny_hf import make_tiny_hf

CASES = [("llama", False, None), ("llama", True, None), ("qwen2", False, None), ("qwen2", False, "40KB")]


@pytest.mark.parametrize("family,tied,shard", CASES, ids=["llama", "llama-tied", "qwen2", "qwen2-sharded"])
def test_logits_and_greedy_match_transformers(tmp_path: Path, family: str, tied: bool, shard: str | None) -> None:
    ref, path = make_tiny_hf(tmp_path, family, tied=tied, shard=shard)
    if shard:
        assert (path / "model.safetensors.index.json").is_file()
    ours = load_hf_decoder(path)
    assert ours.dtype == torch.float32
    ids = torch.randint(0, 97, (1, 23))
    with torch.no_grad():
        want = ref(ids).logits  # [1, T, V]
    got = ours(ours.init_state(), input_ids=ids, logits="all").logits
    assert want.abs().max() > 1.0, "weak test: reference logits are near zero"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)

    ref.generation_config.eos_token_id = None  # no early stop and no eos suppression: plain greedy
    ref.generation_config.pad_token_id = 0
    with torch.no_grad():
        ref_tokens = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
        ref_tokens = ref_tokens[0, ids.shape[1] :]
    state = ours.init_state()
    logits = ours(state, input_ids=ids).logits
    tokens = []
    for _ in range(32):
        t = logits.argmax(-1, keepdim=True)
        tokens.append(int(t))
        logits = ours(state, input_ids=t).logits
    assert tokens == ref_tokens.tolist()


def test_sink_window_cache_equals_full_attention_within_window(tmp_path: Path) -> None:
    ref, path = make_tiny_hf(tmp_path, "qwen2")
    ours = load_hf_decoder(path)
    ids = torch.randint(0, 97, (1, 30))
    with torch.no_grad():
        want = ref(ids).logits
    # sinks + window = 30: every query still sees the whole prefix; fed in uneven pieces.
    state = ours.init_state(CacheConfig(sinks=3, window=27, chunk=7))
    got = torch.cat([ours(state, input_ids=ids[:, a:b], logits="all").logits
                     for a, b in [(0, 7), (7, 8), (8, 15), (15, 22), (22, 29), (29, 30)]], dim=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
