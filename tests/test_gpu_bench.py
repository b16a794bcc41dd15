"""benchmarks/gpu.py keeps running: its tiny preset end to end on the CPU (speech and transformers left out,
see --no-speech), checking the JSON it writes holds every figure of the table."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.gpu import main


def test_gpu_benchmark_tiny_preset_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    main(["--preset", "tiny", "--device", "cpu", "--sessions", "1,3", "--decode-steps", "2", "--prefill-tokens", "16",
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
