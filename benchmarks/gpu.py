"""The GPU benchmark in one call: random weights at the real Qwen2.5-Omni 3B and 7B shapes (no download), and
the Qwen3-Omni 30B-A3B Thinker's mixture-of-experts decoder (`--preset qwen3`).

    .venv/bin/python benchmarks/gpu.py --device cuda                  # 3B and 7B, bf16/int8/int4, < 8 min
    .venv/bin/python benchmarks/gpu.py --device cuda --preset qwen3   # 30B-A3B Thinker (60 GB of bf16 weights)
    .venv/bin/python benchmarks/gpu.py --preset tiny                  # CPU smoke run (CI), a few seconds
    .venv/bin/python benchmarks/gpu.py --preset qwen3-tiny            # the Qwen3 row's CPU smoke run

Qwen3 rows: the Thinker text decoder at the released shapes (48 layers, 128 experts top-8, q/k norm); its
bandwidth bound counts what one decode token reads (attention, routers, the 8 routed experts of each layer, the
head), not the whole 60 GB. The speech rows and transformers' generate are Qwen2.5-Omni's and are not run for
Qwen3 presets (its speech path: benchmarks/qwen3_speech.py, benchmarks/qwen3_first_audio.py): first text only.
int4 experts run one int4 matmul per expert with tokens, which reads the routing on the host, so the Qwen3 int4
row runs without CUDA graphs (`BatchedDecoder.capture_graphs` leaves such a model eager: omni/model/lm/cuda_graph.py).

Measures, per preset: the device's copy bandwidth; Thinker decode ms/token through the serving path (one
session in `BatchedDecoder`, CUDA graphs captured on CUDA, capture time reported) for bf16, int8 and int4
weights, and its share of the bandwidth bound (bytes a step reads / copy bandwidth); Thinker decode of 1, 4,
16 and 32 sessions as one batched step (ms/step, tokens/s, the gain over one session, and the seconds the
start-up capture of that pool's graphs took: every batch size up to N); prefill tokens/s;
Talker step, token2wav chunk and real-time factor (benchmarks/talker.py's turn); end of user speech ->
first audio sample at 1, 4, 16 and 32 concurrent sessions (p50/p95); transformers' generate on the same
Thinker shape (--transformers). Prints a table and writes JSON and, when matplotlib is installed, a PNG.

End of speech -> first audio, as measured here: every session's 5 s of audio (125 audio tokens at 25 per
second, after a 20-token system prompt) is prefilled block by block (2 s = 50 tokens) before the clock
starts, and the Talker has prefilled its prompt; at t0 all N users stop speaking at once (the worst case):
the 5 end-of-turn tokens of every session are prefilled and the Thinker's first reply token sampled in the
batched scheduler; then every session's Talker reply start (one forward each), Talker steps of all sessions
as one batched forward (graphs on CUDA) until each has the codes of its first token2wav chunk, and that chunk
(token2wav runs one session at a time: not batched yet). A session's time is when its first chunk is ready.
Not included: audio encoding of the last partial block, and the Thinker's decoding after its first token
(the Talker is fed text-pad slots instead of waiting for text).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.talker import build as build_speech
from benchmarks.talker import run_turn
from omni.model.layers.mlp import SparseMoE
from omni.model.layers.quant_linear import quantize_decoder
from omni.model.lm.batch import BatchedDecoder
from omni.model.lm.config import DecoderConfig
from omni.model.lm.decoder import DecoderLM
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.qwen3.config import Qwen3OmniConfig
from omni.model.qwen3.thinker import text_config as qwen3_text_config
from omni.model.talker import Talker, TalkerState, TalkerTextEmbeds
from omni.model.thinker import ThinkerConfig
from omni.model.token2wav import Token2Wav
from omni.model.token2wav.streaming import StreamingSchedule, StreamingToken2Wav, Token2WavState

PRESETS = {"tiny": "tiny", "3b": "qwen2.5-omni-3b", "7b": "qwen2.5-omni-7b", "qwen3": "qwen3-omni-30b-a3b",
           "qwen3-tiny": "qwen3-omni-tiny"}
SYSTEM, AUDIO, BLOCK, TAIL = 20, 125, 50, 5  # prompt tokens: system, 5 s of audio, 2-s block, end of turn
TALKER_PROMPT = 64  # Thinker positions the Talker has prefilled before the reply


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def copy_bandwidth(dev: torch.device, nbytes: int) -> float:
    """GB/s of a device-to-device copy (bytes read + written), median of 10."""
    a = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(10):
        sync(dev)
        t0 = time.perf_counter()
        b.copy_(a)
        sync(dev)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times) / 1e9


def is_qwen3(name: str) -> bool:
    return name.startswith("qwen3")


def decoder_config(name: str) -> DecoderConfig:
    """The Thinker text decoder's config of a preset (Qwen3's tiny one: the released config shrunk)."""
    if not is_qwen3(name):
        return ThinkerConfig.from_name(name).text
    cfg = qwen3_text_config(Qwen3OmniConfig.from_name("qwen3-omni-30b-a3b").thinker)
    if name == "qwen3-omni-tiny":
        cfg = replace(cfg, vocab_size=1024, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                      num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, mrope_section=(4, 2, 2))
    return cfg


def build_lm(name: str, dev: torch.device, dtype: torch.dtype, quant: str | None) -> DecoderLM:
    """The Thinker's text model, random weights, built directly in `dtype` (a 7B float32 copy is 28 GB)."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            lm = DecoderLM(decoder_config(name)).eval()
            for layer in lm.layers:  # expert stacks are allocated uninitialised
                if isinstance(layer.mlp, SparseMoE):
                    for p in layer.mlp.experts.parameters():
                        torch.nn.init.normal_(p, std=0.02)
    finally:
        torch.set_default_dtype(default)
    if quant is not None:
        quantize_decoder(lm, quant)
    return lm


def step_bytes(lm: DecoderLM) -> int:
    """Bytes of weights one decode step of one session reads: every layer, the final norm and the head (one
    embedding row aside; with tied embeddings the head is the table); of a mixture-of-experts layer's expert
    stacks only the share of the experts a token is routed to (top-k of E)."""
    layers = sum(t.nbytes for t in list(lm.layers.parameters()) + list(lm.layers.buffers()))
    for layer in lm.layers:
        mlp = layer.mlp
        if isinstance(mlp, SparseMoE):
            stacks = sum(t.nbytes for t in list(mlp.experts.parameters()) + list(mlp.experts.buffers()))
            layers -= stacks - stacks * mlp.top_k // mlp.gate.out_features
    head = lm.embed_tokens.weight if lm.lm_head is None else lm.lm_head.weight
    return layers + lm.norm.weight.nbytes + head.nbytes


def decode_speed(lm: DecoderLM, cache: CacheConfig, steps: int) -> dict[str, float]:
    """ms per token of one session in the serving loop (scheduler + graph replay + token read-back)."""
    dev = lm.device
    batch = BatchedDecoder(lm, max_sessions=1, cache=cache, graph_sizes=(1,))
    capture_s = batch.capture_graphs()
    sid = batch.join(list(range(16)), SamplingConfig(max_new_tokens=steps + 8))
    for _ in range(4):  # prefill, then warm-up steps
        batch.step()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch.step()
    sync(dev)
    batch.leave(sid)
    return {"decode_ms": (time.perf_counter() - t0) / steps * 1e3, "graph_capture_s": capture_s,
            "cuda_graphs": batch.graphs.captured}


def batched_decode(lm: DecoderLM, cache: CacheConfig, n: int, steps: int) -> dict[str, float]:
    """ms per batched decode step of n sessions together (every one decoding) and the tokens/s they make:
    a step reads the weights once for all rows, so up to the ridge point n sessions cost about one."""
    dev = lm.device
    batch = BatchedDecoder(lm, max_sessions=n, cache=cache)
    capture_s = batch.capture_graphs()
    sids = [batch.join(list(range(16 + i)), SamplingConfig(max_new_tokens=steps + 32)) for i in range(n)]
    while not all(batch.sessions[s].ready for s in sids):  # prefill (a budget at a time), then warm-up
        batch.step()
    for _ in range(2):
        batch.step()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch.step()
    sync(dev)
    ms = (time.perf_counter() - t0) / steps * 1e3
    for s in sids:
        batch.leave(s)
    return {"sessions": n, "step_ms": ms, "tokens_per_s": n / ms * 1e3, "graph_capture_s": capture_s,
            "graph_sizes": len(batch.graphs.capture_seconds)}


def prefill_speed(lm: DecoderLM, cache: CacheConfig, tokens: int) -> float:
    ids = torch.randint(0, lm.cfg.vocab_size, (1, tokens), device=lm.device)
    lm(lm.init_state(cache), input_ids=ids)  # warm-up
    sync(lm.device)
    t0 = time.perf_counter()
    lm(lm.init_state(cache), input_ids=ids)
    sync(lm.device)
    return tokens / (time.perf_counter() - t0)


@dataclass
class SpeechSession:
    sid: int
    state: TalkerState
    streamer: StreamingToken2Wav
    wav: Token2WavState
    first_text: torch.Tensor  # [1, E] the Thinker's first reply token's slot (random here)


def speech_sessions(talker: Talker, t2w: Token2Wav, n: int, cache: CacheConfig,
                    blocks: int) -> tuple[BatchedDecoder, list[SpeechSession]]:
    """n Talker sessions in one batched decoder (graphs captured), each with its prompt prefilled as the user
    spoke, and its token2wav stream."""
    dev, E, dcfg = talker.decoder.device, talker.cfg.embedding_size, t2w.cfg.dit
    batch = BatchedDecoder(talker.decoder, max_sessions=n, cache=cache, embeds=True)
    batch.capture_graphs()
    texts = TalkerTextEmbeds(*(torch.randn(E, device=dev) for _ in range(3)))
    sampling = talker.cfg.sampling(seed=0, stop_token_ids=frozenset())
    out = []
    for _ in range(n):
        sid = batch.open()
        state = TalkerState(decoder=batch.sessions[sid].state, sampler=batch.sessions[sid].sampler,
                            sampling=sampling, texts=texts)
        talker.feed_prompt(state, torch.randn(1, TALKER_PROMPT, E, device=dev))
        talker.end_text(state)  # the Thinker keeps ahead: the Talker never waits for a text slot
        streamer = StreamingToken2Wav(t2w, StreamingSchedule(first_chunk_blocks=blocks))
        wav = streamer.init_state(torch.randn(1, dcfg.enc_emb_dim, device=dev),
                                  torch.randn(1, 300, dcfg.mel_dim, device=dev) - 5, seed=0, max_codes=400)
        out.append(SpeechSession(sid, state, streamer, wav, torch.randn(1, E, device=dev)))
    return batch, out


def speak_until_first_audio(talker: Talker, batch: BatchedDecoder, sessions: list[SpeechSession],
                            t0: float) -> list[float]:
    """Every session's reply start, then batched Talker steps; each session's token2wav runs when its first
    chunk is due (one session at a time). Returns seconds from t0 to each session's first chunk."""
    empty = torch.zeros(1, 0, talker.cfg.embedding_size, device=talker.decoder.device)
    codes = {s.sid: talker.start(s.state, empty, s.first_text) for s in sessions}
    num_embeds = sessions[0].streamer.model.cfg.dit.num_embeds
    done: dict[int, float] = {}
    while len(done) < len(sessions):
        for s in sessions:
            if s.sid not in done and s.streamer.step(s.wav, [codes[s.sid] % num_embeds]):
                sync(talker.decoder.device)
                done[s.sid] = time.perf_counter() - t0
        waiting = [s for s in sessions if s.sid not in done]
        if waiting:
            logits = batch.decode({s.sid: talker.decode_input(s.state) for s in waiting})
            for s in waiting:
                row = batch.sessions[s.sid].row
                codes[s.sid] = talker.choose(s.state, logits[row : row + 1].float())
    return list(done.values())


def first_audio(lm: DecoderLM, speech_models: tuple[Talker, Token2Wav] | None, n: int, cache: CacheConfig,
                blocks: int) -> dict[str, float]:
    """End of speech -> first audio chunk of n simultaneous sessions (see the module docstring); without
    speech models, to the first text token only."""
    dev = lm.device
    batch = BatchedDecoder(lm, max_sessions=n, cache=cache, token_budget=256)
    batch.capture_graphs()
    gen = torch.Generator().manual_seed(n)
    prompts = [torch.randint(0, lm.cfg.vocab_size, (SYSTEM + AUDIO + TAIL,), generator=gen).tolist() for _ in range(n)]
    cuts = [0, SYSTEM + BLOCK, SYSTEM + 2 * BLOCK, SYSTEM + AUDIO]
    sids = [batch.join(p[: cuts[1]], SamplingConfig(max_new_tokens=64), respond=False) for p in prompts]
    for lo, hi in zip(cuts[1:-1], cuts[2:], strict=True):  # the user speaks: blocks arrive and are prefilled
        while any(batch.sessions[s].pending for s in sids):
            batch.step()
        for s, p in zip(sids, prompts, strict=True):
            batch.feed(s, p[lo:hi], respond=False)
    while any(batch.sessions[s].pending for s in sids):
        batch.step()
    speech = None if speech_models is None else speech_sessions(*speech_models, n, cache, blocks)
    sync(dev)
    t0 = time.perf_counter()
    for s, p in zip(sids, prompts, strict=True):
        batch.feed(s, p[SYSTEM + AUDIO :])
    text_at: dict[int, float] = {}
    while len(text_at) < n:
        for s in batch.step():
            text_at.setdefault(s, time.perf_counter() - t0)
    out = {"sessions": n, "first_text_ms": statistics.median(text_at.values()) * 1e3}
    if speech is None or speech_models is None:
        return out
    out["talker_graph_capture_s"] = sum(speech[0].graphs.capture_seconds.values())
    done = speak_until_first_audio(speech_models[0], *speech, t0)
    q = statistics.quantiles(done, n=20) if n > 1 else [done[0]] * 19
    return out | {"first_audio_p50_ms": statistics.median(done) * 1e3, "first_audio_p95_ms": q[18] * 1e3}


def transformers_decode(name: str, dev: torch.device, dtype: torch.dtype, new: int = 32) -> dict[str, Any]:
    """transformers' generate on the same Thinker shape (random weights): ms per generated token."""
    try:
        from benchmarks.thinker import build_reference

        ref = build_reference(ThinkerConfig.from_name(name), str(dev), dtype)
        ids = torch.randint(0, ref.config.text_config.vocab_size, (1, 16), device=dev)
        times = {}
        for k in (1, new):
            ref.generate(input_ids=ids, max_new_tokens=k, min_new_tokens=k, do_sample=False)  # warm-up
            sync(dev)
            t0 = time.perf_counter()
            ref.generate(input_ids=ids, max_new_tokens=k, min_new_tokens=k, do_sample=False)
            sync(dev)
            times[k] = time.perf_counter() - t0
        del ref
        return {"decode_ms": (times[new] - times[1]) / (new - 1) * 1e3}
    except Exception as e:  # reported in the table and the JSON, never hidden
        print(f"transformers generate failed: {type(e).__name__}: {e}", file=sys.stderr)
        return {"error": f"{type(e).__name__}: {e}"}


def run_preset(preset: str, args: argparse.Namespace, bandwidth: float) -> dict[str, Any]:
    name, dev = PRESETS[preset], torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # CPU bf16 matmuls are emulated: slow
    cache = CacheConfig(sinks=4, window=args.window, chunk=256)
    out: dict[str, Any] = {"preset": name, "dtype": str(dtype).removeprefix("torch."), "decode": {}}
    for quant in (None, "int8", "int4"):
        lm = build_lm(name, dev, dtype, quant)
        r = decode_speed(lm, cache, args.decode_steps)  # (Qwen3 int4: eager, see the module docstring)
        r["weight_gb"] = step_bytes(lm) / 1e9
        r["bound_ms"] = step_bytes(lm) / (bandwidth * 1e9) * 1e3
        r["share_of_bound"] = r["bound_ms"] / r["decode_ms"]
        out["decode"][quant or out["dtype"]] = r
        if quant is None:
            out["prefill_tok_s"] = prefill_speed(lm, cache, args.prefill_tokens)
            dense = lm
        else:
            del lm
    speech = None
    if args.speech and not is_qwen3(name):
        speech = build_speech("tiny" if preset == "tiny" else name, args.device, dtype)
        turn = argparse.Namespace(device=args.device, codes=args.codes, prompt=TALKER_PROMPT,
                                  first_chunk_blocks=args.first_chunk_blocks)
        run_turn(*speech, turn)  # warm-up
        out["speech"] = run_turn(*speech, turn)
    out["batched_decode"] = [batched_decode(dense, cache, n, args.decode_steps) for n in args.sessions]
    out["first_audio"] = [first_audio(dense, speech, n, cache, args.first_chunk_blocks) for n in args.sessions]
    del dense, speech
    if args.transformers and not is_qwen3(name):
        out["transformers"] = transformers_decode(name, dev, dtype)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def print_table(result: dict[str, Any]) -> None:
    print(f"device {result['device']}: copy bandwidth {result['copy_gb_s']:.0f} GB/s")
    for p in result["presets"]:
        print(f"\n{p['preset']} ({p['dtype']} activations), prefill {p['prefill_tok_s']:.0f} tok/s")
        print(f"  {'weights':<10}{'GB/step':>9}{'ms/token':>10}{'bound ms':>10}{'share':>8}{'graphs s':>10}")
        for kind, r in p["decode"].items():
            print(f"  {kind:<10}{r['weight_gb']:>9.3f}{r['decode_ms']:>10.2f}{r['bound_ms']:>10.3f}"
                  f"{r['share_of_bound']:>8.1%}{r['graph_capture_s']:>10.2f}")
        s = p.get("speech")
        if s is not None:
            print(f"  Talker step {s['talker_step_ms']:.2f} ms, token2wav chunk {s['dit_chunk_ms']:.1f} ms, one "
                  f"session's first audio {s['first_audio_ms']:.0f} ms, RTF {s['rtf']:.3f}")
        one = p["batched_decode"][0]["tokens_per_s"] / p["batched_decode"][0]["sessions"]
        for b in p["batched_decode"]:
            graphs = f", {b['graph_sizes']} graphs captured in {b['graph_capture_s']:.2f} s" if b["graph_sizes"] else ""
            print(f"  {b['sessions']:>3} sessions decoding together: {b['step_ms']:.2f} ms/step, "
                  f"{b['tokens_per_s']:.0f} tokens/s ({b['tokens_per_s'] / one:.1f}x one session's){graphs}")
        for f in p["first_audio"]:
            audio = f" first audio p50 {f['first_audio_p50_ms']:.0f} ms, p95 {f['first_audio_p95_ms']:.0f} ms" \
                if "first_audio_p50_ms" in f else " (speech not run)"
            talker = f", Talker graphs captured in {f['talker_graph_capture_s']:.2f} s" \
                if f.get("talker_graph_capture_s") else ""
            print(f"  {f['sessions']:>3} sessions: end of speech -> first text {f['first_text_ms']:.0f} ms,"
                  f"{audio}{talker}")
        if "transformers" in p:
            t = p["transformers"]
            print("  transformers generate: " + (f"{t['decode_ms']:.2f} ms/token" if "decode_ms" in t else t["error"]))


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for p in result["presets"]:
        kinds = list(p["decode"])
        a.bar([f"{p['preset'][-2:]} {k}" for k in kinds], [p["decode"][k]["decode_ms"] for k in kinds])
        if "speech" not in p:
            continue
        ns = [f["sessions"] for f in p["first_audio"]]
        b.plot(ns, [f["first_audio_p50_ms"] for f in p["first_audio"]], "o-", label=f"{p['preset']} p50")
        b.plot(ns, [f["first_audio_p95_ms"] for f in p["first_audio"]], "s--", label=f"{p['preset']} p95")
    a.set_ylabel("Thinker decode ms/token")
    a.tick_params(axis="x", rotation=45)
    b.set_xlabel("concurrent sessions")
    b.set_ylabel("end of speech -> first audio (ms)")
    b.set_xscale("log", base=2)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=[*PRESETS, "all"], default="all", help="all: 3b and 7b (qwen3: 30B-A3B)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sessions", default="1,4,16,32", help="concurrent sessions for first-audio latency")
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--codes", type=int, default=120, help="codec steps of the Talker turn (50 per second)")
    p.add_argument("--first-chunk-blocks", type=int, default=2, help="2 = reference (36 codes); 1 = 24 codes")
    p.add_argument("--window", type=int, default=2048, help="KV cache window per session")
    p.add_argument("--transformers", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--speech", action=argparse.BooleanOptionalAction, default=True,
                   help="Talker + token2wav (--no-speech: first-text latency only; for CI, where one tiny token2wav "
                        "chunk takes 3-15 s on 2 shared cores)")
    p.add_argument("--out", type=Path, default=Path("gpu_bench"), help="writes OUT.json and OUT.png")
    args = p.parse_args(argv)
    args.sessions = [int(n) for n in args.sessions.split(",")]
    dev = torch.device(args.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        bw = copy_bandwidth(dev, (1 << 30) if dev.type == "cuda" else (64 << 20))
        presets = ["3b", "7b"] if args.preset == "all" else [args.preset]
        result = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "copy_gb_s": bw,
                  "presets": [run_preset(name, args, bw) for name in presets]}
    result["wall_s"] = time.perf_counter() - t0
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    png = args.out.with_suffix(".png")
    print(f"\nwrote {args.out.with_suffix('.json')}" + (f" and {png}" if plot(result, png) else
                                                            " (no PNG: matplotlib is not installed)")
          + f"; {result['wall_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
