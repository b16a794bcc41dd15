"""Qwen3-Omni Code2Wav speed: time to first audio per first-chunk size, per-frame streaming cost, real-time
factor and the whole-sequence decode, on random weights of the tiny test shape and of the released shape.

    .venv/bin/python benchmarks/code2wav.py                                   # tiny and released shape, CPU
    .venv/bin/python benchmarks/code2wav.py --preset qwen3-omni-30b-a3b --device cuda --dtype bfloat16

Frames are pushed one at a time as the Talker would emit them (12.5 per second of speech), with no Talker
cost: "first audio" is Code2Wav's compute for the first chunk (k frames decoded at once when the k-th
arrives; k * 80 ms - 23 ms of audio). The per-frame cost is the median over later chunks of a chunk's time
divided by its frames, counted once the attention window is full or half the frames are in. RTF = Code2Wav
compute / audio duration. Streaming output equals the whole decode (tests/model/test_code2wav.py), so these
are the only costs of streaming.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.model.code2wav import SAMPLE_RATE, Code2Wav, Code2WavConfig, StreamingCode2Wav

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY = Code2WavConfig(
    codebook_size=64, num_quantizers=4, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
    intermediate_size=64, num_hidden_layers=2, sliding_window=4, decoder_dim=64,
)


def build(preset: str, device: str, dtype: torch.dtype) -> Code2Wav:
    cfg = TINY if preset == "tiny" else Code2WavConfig.from_name(preset)
    torch.manual_seed(0)
    with torch.device(device):
        return Code2Wav(cfg).to(dtype).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stream(model: Code2Wav, codes: torch.Tensor, first: int, chunk: int, device: str) -> dict[str, float]:
    """Push frames one by one; time each push (a push that completes no chunk only buffers)."""
    st = StreamingCode2Wav(model, first_chunk_frames=first, chunk_frames=chunk)
    state = st.init_state()
    total_ms, first_ms, first_samples, samples, per_frame = 0.0, float("nan"), 0, 0, []
    settled = min(model.cfg.sliding_window, codes.shape[-1] // 2)  # frames before the per-frame costs count
    for i in range(codes.shape[-1]):
        decoded = state.decoder.frames
        t = time.perf_counter()
        chunks = st.step(state, codes[:, i])
        sync(device)
        ms = (time.perf_counter() - t) * 1e3
        total_ms += ms
        if chunks and not samples:
            first_ms, first_samples = ms, chunks[0].samples.numel()
        elif chunks and decoded >= settled:
            per_frame.append(ms / (state.decoder.frames - decoded))
        samples += sum(c.samples.numel() for c in chunks)
    t = time.perf_counter()
    samples += sum(c.samples.numel() for c in st.flush(state))
    sync(device)
    total_ms += (time.perf_counter() - t) * 1e3
    return {
        "first_audio_ms": first_ms,
        "first_audio_audio_ms": first_samples / SAMPLE_RATE * 1e3,
        "frame_ms": statistics.median(per_frame) if per_frame else float("nan"),
        "rtf": total_ms / 1e3 / (samples / SAMPLE_RATE),
    }


def whole(model: Code2Wav, codes: torch.Tensor, device: str) -> dict[str, float]:
    t = time.perf_counter()
    wav = model(codes[None])
    sync(device)
    ms = (time.perf_counter() - t) * 1e3
    return {"whole_ms": ms, "whole_rtf": ms / 1e3 / (wav.shape[-1] / SAMPLE_RATE)}


def run(preset: str, args: argparse.Namespace) -> None:
    model = build(preset, args.device, DTYPES[args.dtype])
    cfg = model.cfg
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, cfg.codebook_size, (cfg.num_quantizers, args.frames), generator=g).to(args.device)
    stream(model, codes[:, : min(8, args.frames)], 1, 1, args.device)  # warm-up
    print(
        f"{preset} on {args.device} ({args.dtype}), {args.frames} frames = {args.frames * 0.08:.2f} s of audio, "
        f"median of {args.repeats}:"
    )
    for first in args.first_chunks:
        runs = [stream(model, codes, first, args.chunk_frames, args.device) for _ in range(args.repeats)]
        line = ", ".join(f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in runs[0])
        print(f"  stream first {first} frame(s), then {args.chunk_frames}: {line}")
    runs = [whole(model, codes, args.device) for _ in range(args.repeats)]
    print("  whole decode: " + ", ".join(f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in runs[0]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="all", choices=["all", "tiny", "qwen3-omni-30b-a3b"])
    p.add_argument("--device", default="cpu", help="cpu or cuda (when CUDA is available)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--frames", type=int, default=25, help="codec frames per reply (12.5 per second)")
    p.add_argument("--first-chunks", type=int, nargs="+", default=[1, 2, 4], help="first chunk sizes (frames)")
    p.add_argument("--chunk-frames", type=int, default=1, help="frames per later chunk")
    p.add_argument("--repeats", type=int, default=3, help="runs after one warm-up (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    for preset in ["tiny", "qwen3-omni-30b-a3b"] if args.preset == "all" else [args.preset]:
        run(preset, args)


if __name__ == "__main__":
    main()
