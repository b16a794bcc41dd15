"""Qwen3-Omni encoder speed on random weights: AuT encode time per second of audio (one full 8-s attention
window, what streaming encodes each time a window completes, and a whole clip offline) and vision encode
time per image, for the tiny or the released shape.

    .venv/bin/python benchmarks/qwen3_encoders.py                      # tiny, CPU
    .venv/bin/python benchmarks/qwen3_encoders.py --preset real --threads 2
    .venv/bin/python benchmarks/qwen3_encoders.py --preset real --device cuda --dtype bfloat16

Prints one line per measurement: median of --repeats timed runs after --warmup untimed ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.thinker import DTYPES, timed
from omni.model.encoders.aut_encoder import AuTEncoder
from omni.model.encoders.config import AuTEncoderConfig, Qwen3VisionConfig
from omni.model.encoders.qwen3_vision import Qwen3VisionEncoder
from omni.model.encoders.vision_preprocess import patchify

PRESETS = {"tiny": "tiny", "real": "qwen3-omni-30b-a3b"}


def measure(args: argparse.Namespace) -> None:
    dtype, dev, w, r = DTYPES[args.dtype], args.device, args.warmup, args.repeats
    torch.manual_seed(0)
    acfg = AuTEncoderConfig.from_name(PRESETS[args.preset])
    vcfg = Qwen3VisionConfig.from_name(PRESETS[args.preset])
    with torch.device(dev):
        aut = AuTEncoder(acfg).to(dtype).eval()
        vis = Qwen3VisionEncoder(vcfg).to(dtype).eval()
    win_s = acfg.n_window_infer / 100
    window = torch.randn(1, acfg.num_mel_bins, acfg.n_window_infer, device=dev)
    clip = torch.randn(acfg.num_mel_bins, args.clip_seconds * 100, device=dev)
    side = args.image_px
    patches, grid = patchify(torch.randn(2, 3, side, side), vcfg)
    patches = patches.to(dev)
    with torch.inference_mode():
        t_win = timed(lambda: aut.encode_windows(window), dev, w, r)
        t_clip = timed(lambda: aut(clip), dev, w, r)
        t_img = timed(lambda: vis.encode(patches, grid), dev, w, r)
    print(f"preset {args.preset} ({PRESETS[args.preset]}), {dev}, {args.dtype}, threads {torch.get_num_threads()}")
    print(f"AuT one {win_s:g}-s window ({acfg.window_tokens} tokens): {t_win * 1e3:.1f} ms = "
          f"{t_win / win_s * 1e3:.1f} ms per second of audio")
    print(f"AuT {args.clip_seconds}-s clip offline ({aut.token_count(clip.shape[1])} tokens): {t_clip * 1e3:.1f} ms = "
          f"{t_clip / args.clip_seconds * 1e3:.1f} ms per second of audio")
    print(f"vision {side}x{side} image ({grid[1] * grid[2] // 4} tokens, "
          f"{len(vcfg.deepstack_visual_indexes)} DeepStack features): {t_img * 1e3:.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--clip-seconds", type=int, default=20, help="offline clip length in seconds")
    p.add_argument("--image-px", type=int, default=448, help="image side (multiple of 32)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.image_px % 32:
        p.error(f"--image-px must be a multiple of 32, got {args.image_px}")
    if args.clip_seconds <= 0:
        p.error("--clip-seconds must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    measure(args)


if __name__ == "__main__":
    main()
