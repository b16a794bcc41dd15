"""Thinker speed: audio encode time per 2-s block, vision encode time per temporal patch (2 frames), and
prefill tokens/s, on random weights of a preset shape; optionally the same computations through
transformers' Qwen2.5-Omni Thinker (random weights of the same shape) and the time ratio.

    .venv/bin/python benchmarks/thinker.py                          # tiny, CPU
    .venv/bin/python benchmarks/thinker.py --preset 7b --device cuda --dtype bfloat16 --transformers

Prints one line per measurement: median of --repeats timed runs after --warmup untimed ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.model.lm.kv_cache import CacheConfig
from omni.model.thinker import Thinker, ThinkerConfig

PRESETS = {"tiny": "tiny", "3b": "qwen2.5-omni-3b", "7b": "qwen2.5-omni-7b"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def timed(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> float:
    """Median seconds of fn() (synchronising the GPU around each run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_ours(cfg: ThinkerConfig, device: str, dtype: torch.dtype) -> Thinker:
    torch.manual_seed(0)
    with torch.device(device):
        model = Thinker(cfg).to(dtype).eval()
    model.mel.float()
    return model


def build_reference(cfg: ThinkerConfig, device: str, dtype: torch.dtype) -> Any:
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    hf = Qwen2_5OmniThinkerConfig(**cfg.to_hf_config()["thinker_config"])
    hf._attn_implementation = "sdpa"
    for sub in (hf.text_config, hf.audio_config, hf.vision_config):
        sub._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2_5OmniThinkerForConditionalGeneration(hf).to(dtype).eval()


def measure(args: argparse.Namespace) -> None:
    cfg = ThinkerConfig.from_name(PRESETS[args.preset])
    dtype, dev = DTYPES[args.dtype], args.device
    model = build_ours(cfg, dev, dtype)
    mel = torch.randn(cfg.audio.num_mel_bins, cfg.audio.block_frames, device=dev, dtype=dtype)
    side = args.frame_px
    frames = torch.randn(2, 3, side, side, device=dev, dtype=dtype)
    from omni.model.encoders.vision_preprocess import patchify

    patches, grid = patchify(frames, cfg.vision)
    n_vis = grid[1] * grid[2] // 4
    T = args.prefill_tokens
    ids = torch.randint(0, cfg.text.vocab_size, (1, T), device=dev)
    cache = CacheConfig(sinks=4, window=T + 4, chunk=min(T, 512))
    positions = torch.arange(T, device=dev).expand(3, 1, T)
    w, r = args.warmup, args.repeats

    with torch.inference_mode():
        t_audio = timed(lambda: model.audio_tower.encode_blocks(mel[None]), dev, w, r)
        t_vision = timed(lambda: model.visual.encode(patches, grid), dev, w, r)
        t_prefill = timed(lambda: model.lm(model.lm.init_state(cache), input_ids=ids, positions=positions), dev, w, r)
    print(f"preset {args.preset} ({PRESETS[args.preset]}), {dev}, {args.dtype}, threads {torch.get_num_threads()}")
    print(f"ours  audio encode: {t_audio * 1e3:.2f} ms per 2-s block (50 tokens)")
    print(f"ours  vision encode: {t_vision * 1e3:.2f} ms per temporal patch ({side}x{side} px, {n_vis} tokens)")
    print(f"ours  prefill: {T / t_prefill:.0f} tokens/s ({T} tokens in {t_prefill * 1e3:.1f} ms)")
    if not args.transformers:
        return
    ref = build_reference(cfg, dev, dtype)
    tower, visual, lm = ref.model.audio_tower, ref.model.visual, ref.model.language_model
    lens = torch.tensor([cfg.audio.block_frames], device=dev)
    after_cnn = (lens - 1) // 2 + 1
    grid_t = torch.tensor([grid], device=dev)
    with torch.inference_mode():
        r_audio = timed(lambda: tower(mel, feature_lens=lens, aftercnn_lens=after_cnn), dev, w, r)
        r_vision = timed(lambda: visual(patches, grid_thw=grid_t), dev, w, r)
        r_prefill = timed(lambda: lm(input_ids=ids, position_ids=positions, use_cache=True), dev, w, r)
    for name, ours, theirs in (
        ("audio block", t_audio, r_audio),
        ("vision patch", t_vision, r_vision),
        ("prefill", t_prefill, r_prefill),
    ):
        print(f"transformers {name}: {theirs * 1e3:.2f} ms; ours is {theirs / ours:.2f}x its speed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--frame-px", type=int, default=448, help="video frame side (multiple of 28)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--transformers", action="store_true", help="also time transformers on the same shapes")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    measure(args)


if __name__ == "__main__":
    main()
