"""GGUF files with a sentencepiece vocabulary (`tokenizer.ggml.model` = "llama": Llama 2, Mistral, TinyLlama)
against transformers' tokenizer built from the same file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFWriter

from omni.model.errors import CheckpointError
from omni.model.lm.tokenizer import TextTokenizer
from omni.model.loaders.gguf_file import GGUFFile

TEXTS = [
    "What is the capital of France?",
    "the theatre: then, there and then again.",
    "  leading spaces,\ttabs and\n\nnew lines  ",
    "unicode falls back to bytes: café, naïve, 東京, 🙂",
    "special <s> and </s> inline",
    "UPPER and MiXeD case; digits 1234567890",
]
TEMPLATE = "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"


def _write(path: Path, add_space_prefix: bool | None = None) -> Path:
    """A tiny llama GGUF (no tensors needed for the tokenizer) with a sentencepiece-style vocabulary: the
    specials, the 256 byte tokens, single characters and merged pieces with descending scores."""
    pieces = ["\u2581t", "he", "\u2581the", "in", "\u2581a", "er", "\u2581th", "an", "re", "en", "\u2581c", "ap", "it",
              "al", "ital", "\u2581cap", "\u2581capital", "\u2581of", "\u2581F", "ra", "nce", "ance", "\u2581France",
              "at", "\u2581is", "\u2581W", "ha", "\u2581Wh", "\u2581What", "ea", "tre", "\u2581then", "\u2581there",
              "ag", "ain", "\u2581again", "\u2581\u2581", "\u2581\u2581\u2581", "ing", "\u2581s", "pe", "ci",
              "\u2581spe", "ial", "\u2581special", "12", "123", "45"]
    chars = sorted(set("".join(pieces).replace("\u2581", "") + "abcdefghijklmnopqrstuvwxyz"
                       "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?!'-"))
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], "\u2581", *chars, *pieces]
    types = [2, 3, 3, *[6] * 256, *[1] * (1 + len(chars) + len(pieces))]  # unknown, control, byte, normal
    # scores: specials and bytes 0; characters, then pieces, in decreasing order (later pieces merge later)
    scores = [0.0] * 259 + [-float(i) for i in range(1 + len(chars) + len(pieces))]
    w = GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(TEMPLATE)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _reference(path: Path) -> Any:
    tr = pytest.importorskip("transformers", reason="transformers is the test-only reference")
    tr.logging.set_verbosity_error()
    return tr.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_sentencepiece_gguf_tokenises_as_transformers(tmp_path: Path) -> None:
    path = _write(tmp_path / "spm.gguf")
    ours = TextTokenizer.from_gguf_metadata(GGUFFile(path).metadata, str(path))
    ref = _reference(path)
    for text in TEXTS:
        ids = ref(text, add_special_tokens=False).input_ids
        assert ours.encode(text) == ids, text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids), text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    pieces = [ours.tokenizer.id_to_token(i) for i in ours.encode("What is the capital of France?")]
    assert pieces[:1] == ["\u2581What"] and "\u2581capital" in pieces  # merges chain up to whole words
    space = ours.tokenizer.token_to_id("\u2581")
    assert ours.encode("東") == [space, *[3 + b for b in "東".encode()]]  # unknown characters become their bytes
    # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says otherwise
    assert ours.add_bos and ours.render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=False) == \
        "<s>[user] hi</s>"
    assert ours.stop_token_ids == {2}


def test_without_a_space_prefix(tmp_path: Path) -> None:
    """`tokenizer.ggml.add_space_prefix` = false: no "\u2581" before the first word, as llama.cpp reads the flag
    (transformers' GGUF loader ignores it, so it cannot be the reference here)."""
    plain = _write(tmp_path / "plain.gguf", add_space_prefix=False)
    ours = TextTokenizer.from_gguf_metadata(GGUFFile(plain).metadata, str(plain))
    prefixed = _write(tmp_path / "prefixed.gguf")
    usual = TextTokenizer.from_gguf_metadata(GGUFFile(prefixed).metadata, str(prefixed))
    assert ours.encode(" the capital") == usual.encode("the capital")
    assert ours.encode("the")[0] != usual.encode("the")[0]
    for text in TEXTS:  # lossless (bytes for what the vocabulary lacks, spaces kept)
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
        if not text.startswith(" "):  # with the prefix, leading spaces merge into it (as in transformers)
            assert usual.decode(usual.encode(text), skip_special_tokens=False) == text


def test_sentencepiece_without_scores_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "spm.gguf")
    meta = dict(GGUFFile(path).metadata)
    del meta["tokenizer.ggml.scores"]
    with pytest.raises(CheckpointError, match="scores"):
        TextTokenizer.from_gguf_metadata(meta, str(path))
    meta["tokenizer.ggml.model"] = "t5"
    with pytest.raises(CheckpointError, match="'t5' is not supported"):
        TextTokenizer.from_gguf_metadata(meta, str(path))
