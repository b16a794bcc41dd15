"""Speech output speed: Talker prefill and codec steps, streaming token2wav chunks, time to first audio and
real-time factor, on random weights of a preset shape (random codes: the Talker is forced to run
--codes steps, and its codes are folded into the DiT's code range).

    .venv/bin/python benchmarks/talker.py                                        # tiny, CPU
    .venv/bin/python benchmarks/talker.py --preset qwen2.5-omni-7b --device cuda --dtype bfloat16

Time to first audio = Talker prefill + the codec steps the first chunk needs (36 with the reference's
2-block first chunk, 24 with 1 block) + that chunk's DiT ODE (36 evaluations x 2 CFG rows) + BigVGAN.
It assumes the Thinker keeps ahead of the Talker (its text slots are ready), as on a GPU. RTF = compute time
of Talker + token2wav over the whole turn / audio duration. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.model.talker import Talker, TalkerConfig, TalkerTextEmbeds
from omni.model.token2wav import SAMPLE_RATE, Token2Wav, Token2WavConfig
from omni.model.token2wav.streaming import StreamingSchedule, StreamingToken2Wav

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_configs() -> tuple[TalkerConfig, Token2WavConfig]:
    """The speech tests' tiny Talker and token2wav shapes (tests/model/tiny_speech.py), read as config.json is."""
    from tests.model.tiny_speech import BIGVGAN, DIT, TALKER

    talker = TalkerConfig.from_hf_config({"talker_config": TALKER})
    return talker, Token2WavConfig.from_hf_config({"token2wav_config": {"dit_config": DIT, "bigvgan_config": BIGVGAN}})


def build(preset: str, device: str, dtype: torch.dtype) -> tuple[Talker, Token2Wav]:
    if preset == "tiny":
        tcfg, wcfg = tiny_configs()
    else:
        tcfg, wcfg = TalkerConfig.from_name(preset), Token2WavConfig()
    torch.manual_seed(0)
    with torch.device(device):
        talker = Talker(tcfg).to(dtype).eval()
        token2wav = Token2Wav(wcfg).eval()  # float32, as the reference runs it
    return talker, token2wav


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_turn(talker: Talker, t2w: Token2Wav, args: argparse.Namespace) -> dict[str, float]:
    dev, E = args.device, talker.cfg.embedding_size
    g = torch.Generator(device=dev).manual_seed(1)
    texts = TalkerTextEmbeds(*(torch.randn(E, device=dev, generator=g) for _ in range(3)))
    sampling = talker.cfg.sampling(seed=0, stop_token_ids=frozenset(), max_new_tokens=args.codes)
    state = talker.init_state(texts, sampling=sampling)
    talker.end_text(state)  # the reply is "complete": the Talker never waits for the Thinker
    prompt = torch.randn(1, args.prompt, E, device=dev, generator=g)
    dcfg = t2w.cfg.dit
    streamer = StreamingToken2Wav(t2w, StreamingSchedule(first_chunk_blocks=args.first_chunk_blocks))
    wav_state = streamer.init_state(
        torch.randn(1, dcfg.enc_emb_dim, device=dev),
        torch.randn(1, 300, dcfg.mel_dim, device=dev) - 5,
        seed=0,
        max_codes=args.codes,
    )
    times = {"talker": 0.0, "token2wav": 0.0}
    first_audio, first_steps, samples, chunk_ms = None, 0, 0, []
    sync(dev)
    t0 = time.perf_counter()
    code = talker.start(state, prompt, torch.randn(1, E, device=dev, generator=g))
    sync(dev)
    prefill_ms = (time.perf_counter() - t0) * 1e3
    times["talker"] += prefill_ms / 1e3
    step_ms = []
    for i in range(args.codes):
        t = time.perf_counter()
        chunks = streamer.step(wav_state, [code % dcfg.num_embeds])
        sync(dev)
        dt = time.perf_counter() - t
        times["token2wav"] += dt
        if chunks:
            chunk_ms.append(dt * 1e3)
        for c in chunks:
            samples += c.samples.numel()
            if first_audio is None:
                first_audio, first_steps = (time.perf_counter() - t0) * 1e3, i + 1
        if i + 1 == args.codes:
            break
        t = time.perf_counter()
        code = talker.step(state)
        sync(dev)
        step_ms.append((time.perf_counter() - t) * 1e3)
        times["talker"] += step_ms[-1] / 1e3
    t = time.perf_counter()
    for c in streamer.flush(wav_state):
        samples += c.samples.numel()
    sync(dev)
    times["token2wav"] += time.perf_counter() - t
    audio_s = samples / SAMPLE_RATE
    return {
        "prefill_ms": prefill_ms,
        "talker_step_ms": statistics.median(step_ms),
        "dit_chunk_ms": statistics.median(chunk_ms) if chunk_ms else float("nan"),
        "first_audio_steps": first_steps,
        "first_audio_ms": first_audio if first_audio is not None else float("nan"),
        "audio_s": audio_s,
        "rtf_talker": times["talker"] / audio_s,
        "rtf_token2wav": times["token2wav"] / audio_s,
        "rtf": (times["talker"] + times["token2wav"]) / audio_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=["tiny", "qwen2.5-omni-7b", "qwen2.5-omni-3b"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="Talker dtype (token2wav: float32)")
    p.add_argument("--codes", type=int, default=120, help="codec steps per turn (50 per second of speech)")
    p.add_argument("--prompt", type=int, default=64, help="Thinker prompt positions the Talker prefills")
    p.add_argument("--first-chunk-blocks", type=int, default=2, help="2 = reference (36 codes); 1 = 24 codes")
    p.add_argument("--repeats", type=int, default=3, help="turns measured after one warm-up (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    talker, t2w = build(args.preset, args.device, DTYPES[args.dtype])
    run_turn(talker, t2w, args)  # warm-up
    runs = [run_turn(talker, t2w, args) for _ in range(args.repeats)]
    print(
        f"preset {args.preset} on {args.device} ({args.dtype} Talker, float32 token2wav), {args.codes} codes, "
        f"first chunk {args.first_chunk_blocks} block(s), median of {args.repeats}:"
    )
    for key in runs[0]:
        print(f"  {key:18s} {statistics.median(r[key] for r in runs):10.2f}")


if __name__ == "__main__":
    main()
