"""Qwen3-Omni speech path speed (Talker + code predictor + streaming Code2Wav), given Thinker outputs, on random
weights of the tiny test shape or of the released shape.

    .venv/bin/python benchmarks/qwen3_speech.py                                     # tiny preset, CPU
    .venv/bin/python benchmarks/qwen3_speech.py --preset real --frames 2            # released shapes, CPU
    .venv/bin/python benchmarks/qwen3_speech.py --preset real --talker-layers 4     # fewer MoE layers (memory)
    .venv/bin/python benchmarks/qwen3_speech.py --preset real --device cuda --dtype bfloat16

The Thinker's outputs are random vectors in its width (its own cost is benchmarks/thinker.py's business): a
user turn of --user tokens is prefilled first (not timed in first audio), then the reply starts. Reported:
* talker step: the MoE Talker's forward for one frame (codebook 0), median over frames after the first;
* MTP: the code predictor's 15-step pass per frame (codebooks 1..15), median;
* code2wav: the streaming decode of one frame (1-frame chunks), median;
* first audio: from the first Thinker reply token (begin_reply: the 9-position prefix) to the first PCM chunk
  (frame 0 + its MTP pass + its 1365 samples), with --first-chunk frames before audio;
* RTF: total compute of all frames / their audio (80 ms per frame).
Greedy sampling (sampling cost is the same shape either way). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.model.code2wav import SAMPLE_RATE, Code2Wav, Code2WavConfig
from omni.model.qwen3.config import Qwen3OmniConfig
from omni.model.qwen3.speech import Qwen3SpeakingSession, Qwen3SpeechModels, Qwen3SpeechSettings
from omni.model.qwen3.talker import GREEDY, Qwen3Talker

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REAL = "qwen3-omni-30b-a3b"


def tiny_config() -> Qwen3OmniConfig:
    """The released config with the Talker, code predictor and Code2Wav shrunk to the test checkpoint's sizes
    (tests/model/qwen3_tiny.py): hidden 32, 4 experts top-2, 4 codebooks, codec vocab 1088."""
    raw = Qwen3OmniConfig.from_name(REAL).to_hf_config()
    text = raw["thinker_config"]["text_config"]
    text.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, vocab_size=300)
    text["rope_parameters"] = dict(text.get("rope_parameters") or {}, mrope_section=[2, 1, 1])
    tk = raw["talker_config"]
    tk["text_config"].update(vocab_size=1088, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4,
                             num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32)
    tk["text_config"]["rope_parameters"] = dict(tk["text_config"].get("rope_parameters") or {},
                                                mrope_section=[2, 1, 1])
    tk["code_predictor_config"].update(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_code_groups=4)
    tk.update(num_code_groups=4, thinker_hidden_size=32, accept_hidden_layer=1, codec_pad_id=1060,
              codec_bos_id=1061, codec_eos_token_id=1062, codec_nothink_id=1067, codec_think_bos_id=1068,
              codec_think_eos_id=1069, speaker_id={"chelsie": 1080, "ethan": 1081, "aiden": 1082})
    raw["code2wav_config"].update(codebook_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  num_key_value_heads=4, intermediate_size=64, num_quantizers=4, decoder_dim=64)
    raw.update(im_start_token_id=257, im_end_token_id=258, system_token_id=270, user_token_id=271,
               assistant_token_id=272, tts_pad_token_id=265, tts_bos_token_id=266, tts_eos_token_id=267)
    return Qwen3OmniConfig.from_hf_config(raw)


def build(preset: str, device: str, dtype: torch.dtype, talker_layers: int | None) -> Qwen3SpeechModels:
    cfg = tiny_config() if preset == "tiny" else Qwen3OmniConfig.from_name(REAL)
    assert cfg.talker is not None and cfg.code2wav_config is not None
    if talker_layers is not None:
        cfg = copy.deepcopy(cfg)
        assert cfg.talker is not None
        cfg.talker.text_config["num_hidden_layers"] = talker_layers
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype (the released Talker is 3.3 B parameters)
    try:
        with torch.device(device):
            talker = Qwen3Talker(cfg.talker).eval()
            code2wav = Code2Wav(Code2WavConfig.from_hf_config(cfg.code2wav_config)).float().eval()
    finally:
        torch.set_default_dtype(default)
    return Qwen3SpeechModels(config=cfg, talker=talker, code2wav=code2wav)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, sink: list[float], device: str) -> Any:
    def wrapped(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        out = fn(*a, **k)
        sync(device)
        sink.append((time.perf_counter() - t) * 1e3)
        return out
    return wrapped


def run(models: Qwen3SpeechModels, frames: int, user: int, first_chunk: int, device: str) -> dict[str, float]:
    cfg = models.config
    E = cfg.thinker.hidden_size
    g = torch.Generator(device=device).manual_seed(1)
    table = torch.randn(cfg.thinker.text_config["vocab_size"], E, generator=g, device=device) * 0.02
    sampling = dataclasses.replace(GREEDY, max_new_tokens=frames)
    s = Qwen3SpeakingSession(models, table, Qwen3SpeechSettings(sampling=sampling, predictor_sampling=GREEDY,
                                                                first_chunk_frames=first_chunk))
    talker = models.talker
    ids = torch.full((user,), 65)
    ids[0], ids[1] = cfg.im_start_token_id, cfg.user_token_id
    s.feed_user_turn(ids, torch.randn(user, E, generator=g, device=device),
                     torch.randn(user, E, generator=g, device=device))
    mtp: list[float] = []
    c2w: list[float] = []
    talker.predict_residual = timed(talker.predict_residual, mtp, device)  # type: ignore[method-assign]
    s.streamer.step = timed(s.streamer.step, c2w, device)  # type: ignore[method-assign]
    steps: list[float] = []
    t0 = time.perf_counter()
    s.begin_reply(torch.randn(3, E, generator=g, device=device), torch.randn(E, generator=g, device=device))
    sync(device)
    prefix = (time.perf_counter() - t0) * 1e3
    for _ in range(frames):  # the whole reply's text is known: the Talker never waits
        s.push_text(torch.randn(E, generator=g, device=device))
    s.end_text()
    first_audio = float("nan")
    samples = 0
    while s.replying:
        t = time.perf_counter()
        n_mtp, n_c2w = len(mtp), len(c2w)
        chunks = list(s.pump(max_frames=1))
        sync(device)
        total = (time.perf_counter() - t) * 1e3
        steps.append(total - sum(mtp[n_mtp:]) - sum(c2w[n_c2w:]))
        if chunks and samples == 0:
            first_audio = (time.perf_counter() - t0) * 1e3
        samples += sum(c.samples.numel() for c in chunks)
    wall = (time.perf_counter() - t0) * 1e3
    later = steps[1:] or steps  # frame 0's codebook 0 comes with the prefix
    return {"frames": len(s.frames), "talker_step_ms": statistics.median(later), "prefix_ms": prefix,
            "mtp_ms": statistics.median(mtp), "code2wav_ms": statistics.median(c2w), "first_audio_ms": first_audio,
            "rtf": wall / (len(s.frames) * 80.0), "audio_s": samples / SAMPLE_RATE}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=("tiny", "real"), default="tiny",
                    help="tiny: the test checkpoint's shape; real: the released 30B-A3B Talker/MTP/Code2Wav shapes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="Talker dtype (default float32 for tiny, bfloat16 for real); Code2Wav runs float32")
    ap.add_argument("--frames", type=int, default=None, help="frames per reply (default 40 tiny, 3 real)")
    ap.add_argument("--user", type=int, default=64, help="user-turn tokens prefilled before the reply")
    ap.add_argument("--first-chunk", type=int, default=1, help="frames before the first audio chunk")
    ap.add_argument("--talker-layers", type=int, default=None,
                    help="override the Talker's MoE layer count (to fit memory; numbers then scale ~linearly)")
    ap.add_argument("--repeat", type=int, default=2, help="replies measured (the first warms up)")
    args = ap.parse_args()
    dtype = DTYPES[args.dtype or ("float32" if args.preset == "tiny" else "bfloat16")]
    frames = args.frames or (40 if args.preset == "tiny" else 3)
    t = time.perf_counter()
    models = build(args.preset, args.device, dtype, args.talker_layers)
    layers = models.talker.decoder.cfg.num_layers
    print(f"preset {args.preset}: talker {layers} layers, {dtype}, device {args.device}; "
          f"built in {time.perf_counter() - t:.1f} s; torch threads {torch.get_num_threads()}")
    for i in range(args.repeat):
        r = run(models, frames, args.user, args.first_chunk, args.device)
        print(f"reply {i}: {r['frames']} frames ({r['audio_s']:.2f} s audio): talker step {r['talker_step_ms']:.2f} ms "
              f"(9-position prefix {r['prefix_ms']:.2f} ms), MTP {r['mtp_ms']:.2f} ms/frame, "
              f"code2wav {r['code2wav_ms']:.2f} ms/frame, first audio {r['first_audio_ms']:.1f} ms "
              f"after the first Thinker token, RTF {r['rtf']:.3f}")


if __name__ == "__main__":
    main()
