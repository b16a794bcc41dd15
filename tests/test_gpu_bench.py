"""benchmarks/gpu.py keeps running: its tiny presets (Qwen2.5-Omni's and the Qwen3-Omni MoE row's) end to end on
the CPU (speech and transformers left out, see --no-speech), checking the JSON it writes holds every figure of the
table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.gpu import main


@pytest.mark.parametrize("preset", ["tiny", "qwen3-tiny"])
def test_gpu_benchmark_tiny_preset_runs(tmp_path: Path, preset: str) -> None:
    out = tmp_path / "bench"
    main(["--preset", preset, "--device", "cpu", "--sessions", "1,3", "--decode-steps", "2", "--prefill-tokens", "16",
          "--window", "64", "--no-speech", "--no-transformers", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    (p,) = result["presets"]
    assert set(p["decode"]) == {"float32", "int8", "int4"}
    for r in p["decode"].values():
        assert r["decode_ms"] > 0 and 0 < r["share_of_bound"] and math.isfinite(r["bound_ms"])
    assert p["decode"]["int4"]["weight_gb"] < p["decode"]["int8"]["weight_gb"] < p["decode"]["float32"]["weight_gb"]
    assert [f["sessions"] for f in p["first_audio"]] == [b["sessions"] for b in p["batched_decode"]] == [1, 3]
    assert all(b["step_ms"] > 0 and b["tokens_per_s"] > 0 for b in p["batched_decode"])
    assert result["copy_gb_s"] > 0 and p["prefill_tok_s"] > 0


def test_qwen3_row_counts_only_the_routed_experts() -> None:
    """The 30B-A3B bound: one decode token reads attention, routers, 8 of 128 experts per layer and the head
    (about 6 GB of the 61 GB of bf16 weights), built on the meta device (no memory)."""
    import torch

    from benchmarks.gpu import decoder_config, step_bytes
    from omni.model.lm.decoder import DecoderLM

    cfg = decoder_config("qwen3-omni-30b-a3b")
    assert (cfg.num_layers, cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size) == (48, 128, 8, 2048)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            lm = DecoderLM(cfg)
    finally:
        torch.set_default_dtype(default)
    total = sum(p.nbytes for p in lm.parameters())
    experts = 48 * 128 * 3 * 768 * 2048 * 2
    embedding = lm.embed_tokens.weight.nbytes  # one row read per token, not counted
    assert abs(step_bytes(lm) - (total - embedding - experts + experts * 8 // 128)) < 1e6
    assert 5e9 < step_bytes(lm) < 7e9 and 60e9 < total < 62e9
