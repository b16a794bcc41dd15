"""The LM's probability that the user's message is finished (omni.model.lm.end_of_turn, computed inside
ChatSession.prefill_turn(score_end=True)): against transformers on the same GGUF, and on the packaged model a
finished question against its unfinished prefix at the default threshold of `omni serve --semantic-eot`."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from omni.model.embedded.packaged import default_model_path
from omni.model.lm.chat_session import ChatSession
from omni.model.lm.end_of_turn import end_token_ids, open_words
from omni.model.loaders import LoadedLM, load_lm
from omni.streaming.engines.embedded import DEFAULT_SYSTEM_PROMPT, as_sentence
from omni.streaming.vad import DEFAULT_SEMANTIC_EOT

FINISHED = "What is the capital of France?"
UNFINISHED = "What is the capital of"


def score(lm: LoadedLM, words: str, system: str = DEFAULT_SYSTEM_PROMPT) -> float:
    chat = ChatSession(lm, system_prompt=system)
    chat.prefill_history()
    chat.prefill_turn(as_sentence(words), score_end=True)
    assert chat.end_probability is not None
    return chat.end_probability


@pytest.fixture(scope="module")
def packaged() -> LoadedLM:
    return load_lm()


def test_open_words_drop_the_final_punctuation_only() -> None:
    assert open_words("What is the capital of France?") == "What is the capital of France"
    assert open_words("Wait... ") == "Wait"
    assert open_words("Is it 3.5?!") == "Is it 3.5"
    assert open_words("?") == ""


def test_a_finished_question_scores_above_the_default_threshold_and_its_prefix_below(packaged: LoadedLM) -> None:
    finished, unfinished = score(packaged, FINISHED), score(packaged, UNFINISHED)
    assert unfinished < DEFAULT_SEMANTIC_EOT <= finished, (finished, unfinished)


def test_scoring_leaves_the_turn_and_its_reply_unchanged(packaged: LoadedLM) -> None:
    plain = ChatSession(packaged, system_prompt=DEFAULT_SYSTEM_PROMPT)
    plain.prefill_history()
    fed_plain = plain.prefill_turn(FINISHED)
    assert plain.end_probability is None  # not asked for
    scored = ChatSession(packaged, system_prompt=DEFAULT_SYSTEM_PROMPT)
    scored.prefill_history()
    fed_scored = scored.prefill_turn(FINISHED, score_end=True)
    assert scored.end_probability is not None and fed_scored == fed_plain
    assert scored.reply(FINISHED) == plain.reply(FINISHED)
    assert scored.last.prompt_tokens == plain.last.prompt_tokens <= 4  # only the assistant header was left
    nothing = ChatSession(packaged, system_prompt=DEFAULT_SYSTEM_PROMPT)  # no history in the cache: nothing fed
    assert nothing.prefill_turn(FINISHED, score_end=True) == 0 and nothing.end_probability is None


def test_probability_matches_transformers_on_the_same_gguf() -> None:
    tr = pytest.importorskip("transformers", reason="transformers is the test-only reference")
    tr.logging.set_verbosity_error()
    path = default_model_path()
    tok = tr.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = tr.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ours = load_lm(dtype=torch.float32)
    ends = end_token_ids(ours.tokenizer)
    assert tok.convert_tokens_to_ids("<|im_end|>") in ends
    for words in (FINISHED, UNFINISHED, "Tell me a joke about"):
        sentence = as_sentence(words)
        messages: list[dict[str, Any]] = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                          {"role": "user", "content": sentence}]
        text = tok.apply_chat_template(messages, tokenize=False)
        cut = text.rindex(open_words(sentence)) + len(open_words(sentence))
        ids = tok(text[:cut], add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            want = float(model(ids).logits[0, -1].softmax(-1)[ends].sum())
        got = score(ours, words)
        assert got == pytest.approx(want, abs=0.02), (words, got, want)
