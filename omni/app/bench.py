"""`omni bench`: load time, prefill and decode tokens/s of a text LM, beside transformers' generate.

Prints numbers; asserts nothing. The transformers baseline loads the same weights (the same GGUF or
checkpoint directory) in the same process, when transformers is installed (the `test` extra).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from omni.app.lm_args import add_model_arguments, apply_threads, check_device, dtype_of

PROMPT = "Write a short story about a robot who learns to paint. Describe the colours it discovers."


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--new-tokens", type=int, default=64, help="tokens to decode per measurement (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="measurements per engine, the best reported (default %(default)s)")
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline")
    p.set_defaults(run=run)


def _ours(args: argparse.Namespace, dtype: torch.dtype | None) -> dict[str, float]:
    from omni.model.loaders import load_lm

    lm = load_lm(args.model, dtype=dtype, device=args.device, quant=args.quant)
    ids = lm.tokenizer.encode(lm.tokenizer.render_chat([{"role": "user", "content": PROMPT}]))
    best = {"load_s": lm.load_seconds, "prefill_tok_s": 0.0, "decode_tok_s": 0.0, "prompt_tokens": len(ids)}
    model = lm.model
    for _ in range(args.repeats):
        state = model.init_state()
        x = torch.tensor([ids], device=model.device)
        t0 = time.perf_counter()
        logits = model(state, input_ids=x).logits
        t1 = time.perf_counter()
        assert logits is not None
        for _ in range(args.new_tokens):
            token = logits.argmax(-1, keepdim=True)
            logits = model(state, input_ids=token).logits
            assert logits is not None
        float(logits[0, 0])  # wait for the device
        t2 = time.perf_counter()
        best["prefill_tok_s"] = max(best["prefill_tok_s"], len(ids) / (t1 - t0))
        best["decode_tok_s"] = max(best["decode_tok_s"], args.new_tokens / (t2 - t1))
    from omni.model.layers.int4_linear import Int4Linear, Q4Linear

    dtype_name = str(model.dtype).removeprefix("torch.")
    if any(isinstance(m, Int4Linear | Q4Linear) for m in model.modules()):
        dtype_name = "int4+" + dtype_name.replace("bfloat16", "bf16").replace("float32", "f32")
    if args.quant is not None:
        dtype_name = f"{args.quant}+{dtype_name}"
    best["dtype"] = dtype_name  # type: ignore[assignment]
    return best


def _transformers(args: argparse.Namespace, source: str) -> dict[str, float] | None:
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: baseline skipped (install the `test` extra)")
        return None
    transformers.logging.set_verbosity_error()
    path = Path(source)
    t0 = time.perf_counter()
    kwargs = {"gguf_file": path.name} if path.is_file() else {}
    root = str(path.parent if path.is_file() else path)
    tok = transformers.AutoTokenizer.from_pretrained(root, **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32, **kwargs).eval()
    load_s = time.perf_counter() - t0
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    best = {"load_s": load_s, "prefill_tok_s": 0.0, "decode_tok_s": 0.0, "prompt_tokens": ids.shape[1]}
    with torch.inference_mode():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            t1 = time.perf_counter()
            model.generate(ids, max_new_tokens=args.new_tokens + 1, min_new_tokens=args.new_tokens + 1,
                           do_sample=False)
            t2 = time.perf_counter()
            best["prefill_tok_s"] = max(best["prefill_tok_s"], ids.shape[1] / (t1 - t0))
            best["decode_tok_s"] = max(best["decode_tok_s"], args.new_tokens / ((t2 - t1) - (t1 - t0)))
    best["dtype"] = "float32"
    return best


def run(args: argparse.Namespace) -> int:
    from omni.model.embedded.packaged import default_model_path
    from omni.model.loaders import CheckpointError

    try:
        apply_threads(args)
        check_device(args.device)
        for flag, value in (("--new-tokens", args.new_tokens), ("--repeats", args.repeats)):
            if value < 1:  # (was: a table of 0.0 tok/s)
                raise ValueError(f"{flag} must be >= 1, got {value}")
    except ValueError as e:
        print(f"omni bench: error: {e}", file=sys.stderr)
        return 2
    source = args.model or str(default_model_path())
    print(f"model: {source}\ntorch threads: {torch.get_num_threads()}, new tokens: {args.new_tokens}")
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        rows.append(("omni", _ours(args, dtype_of(args))))
        if dtype_of(args) is None and not Path(source).is_dir():  # GGUF: also the expanded weights
            rows.append(("omni", _ours(args, torch.bfloat16)))
            rows.append(("omni", _ours(args, torch.float32)))
    except CheckpointError as e:
        print(f"omni bench: error: {e}", file=sys.stderr)
        return 1
    if not args.no_transformers:
        ref = _transformers(args, source)
        if ref is not None:
            rows.append(("transformers generate", ref))
    print(f"{'engine':<24}{'dtype':<10}{'load s':>8}{'prefill tok/s':>15}{'decode tok/s':>14}")
    for name, r in rows:
        print(f"{name:<24}{r['dtype']!s:<10}{r['load_s']:>8.2f}{r['prefill_tok_s']:>15.1f}{r['decode_tok_s']:>14.1f}")
    if len(rows) > 1 and rows[-1][0].startswith("transformers"):
        base = rows[-1][1]
        for name, r in rows[:-1]:
            print(f"{name} {r['dtype']}: decode {r['decode_tok_s'] / base['decode_tok_s']:.2f}x transformers, "
                  f"load {base['load_s'] / r['load_s']:.1f}x faster")
    return 0
