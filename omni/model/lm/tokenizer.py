"""Text tokenizer and chat template, from a checkpoint directory or from GGUF metadata.

Tokenisation runs in the `tokenizers` library; chat templates are rendered with a sandboxed jinja2
environment configured as the reference renders them (trim_blocks, lstrip_blocks).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from omni.model.errors import CheckpointError

Message = dict[str, str]

# Pre-tokenizer regexes by GGUF `tokenizer.ggml.pre` name (facts from llama.cpp's vocabulary table).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(split: str | None, digits: bool = False) -> Any:
    parts: list[Any] = []
    if digits:
        parts.append(pre_tokenizers.Digits(individual_digits=True))
    if split is None:
        parts.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        parts.append(pre_tokenizers.Split(pattern=_regex(split), behavior="isolated", invert=False))
        parts.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(parts)


def _regex(pattern: str) -> Any:
    from tokenizers import Regex

    return Regex(pattern)


_PRE_TOKENIZERS = {
    "default": lambda: _byte_level(None),
    "gpt2": lambda: _byte_level(None),
    "smollm": lambda: _byte_level(None, digits=True),
    "starcoder": lambda: _byte_level(None, digits=True),
    "qwen2": lambda: _byte_level(_QWEN2_SPLIT),
    "llama-bpe": lambda: _byte_level(_LLAMA3_SPLIT),
}


class TextTokenizer:
    """Encode/decode text and render chat prompts for one model."""

    def __init__(
        self, tokenizer: Tokenizer, chat_template: str | None, bos_token: str | None = None,
        eos_token: str | None = None, eos_token_ids: Sequence[int] = (), add_bos: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos = add_bos
        # End of a reply: the configured eos ids plus the end-of-turn markers of ChatML and Llama 3.
        ids = {int(i) for i in eos_token_ids if i is not None}
        for tok in (eos_token, "<|im_end|>", "<|eot_id|>"):
            tid = tokenizer.token_to_id(tok) if tok else None
            if tid is not None:
                ids.add(tid)
        self.stop_token_ids = frozenset(ids)
        self._template: jinja2.Template | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of text; special-token strings in it (e.g. "<|im_start|>") map to their ids."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, from the model's own chat template."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template; use plain completion instead")
        if self._template is None:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._template = env.from_string(self.chat_template)
        text = self._template.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "",
        )
        if self.add_bos and self.bos_token and not text.startswith(self.bos_token):
            text = self.bos_token + text
        return text

    # ---- constructors ------------------------------------------------------------------------------------
    @classmethod
    def from_directory(cls, directory: str | Path) -> TextTokenizer:
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{directory}: no tokenizer.json")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for parse errors
            raise CheckpointError(f"{path}: unreadable tokenizer ({e})") from None
        cfg = _read_json(directory / "tokenizer_config.json")
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja_file = directory / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text()
        gen = _read_json(directory / "generation_config.json")
        eos = gen.get("eos_token_id", [])
        return cls(
            tok, template, bos_token=_token_str(cfg.get("bos_token")), eos_token=_token_str(cfg.get("eos_token")),
            eos_token_ids=eos if isinstance(eos, list) else [eos], add_bos=bool(cfg.get("add_bos_token", False)),
        )

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], where: str) -> TextTokenizer:
        kind = meta.get("tokenizer.ggml.model")
        tokens: list[str] = meta["tokenizer.ggml.tokens"]
        merges = [_pair(m) for m in meta.get("tokenizer.ggml.merges", [])]
        vocab = {t: i for i, t in enumerate(tokens)}
        if kind == "gpt2":
            pre = meta.get("tokenizer.ggml.pre", "default")
            if pre not in _PRE_TOKENIZERS:
                known = ", ".join(sorted(_PRE_TOKENIZERS))
                raise CheckpointError(f"{where}: GGUF pre-tokenizer {pre!r} is not supported; known: {known}")
            tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
            tok.pre_tokenizer = _PRE_TOKENIZERS[pre]()
            tok.decoder = decoders.ByteLevel()
            add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
        elif kind == "llama":
            tok = _sentencepiece_bpe(meta, vocab, merges, where)
            add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))  # llama.cpp's default for these
        else:
            raise CheckpointError(f"{where}: GGUF tokenizer model {kind!r} is not supported "
                                  "('gpt2' byte-level BPE, 'llama' sentencepiece)")
        types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
        # ggml token types: 3 = control (special), 4 = user-defined (added, not special)
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])

        def name(key: str) -> str | None:
            i = meta.get(key)
            return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

        eos_id = meta.get("tokenizer.ggml.eos_token_id")
        return cls(
            tok, meta.get("tokenizer.chat_template"), bos_token=name("tokenizer.ggml.bos_token_id"),
            eos_token=name("tokenizer.ggml.eos_token_id"), eos_token_ids=[eos_id] if eos_id is not None else [],
            add_bos=add_bos,
        )


def _pair(merge: str) -> tuple[str, str]:
    left, _, right = merge.partition(" ")
    return left, right


def _sentencepiece_bpe(meta: dict[str, Any], vocab: dict[str, int], merges: list[tuple[str, str]],
                       where: str) -> Tokenizer:
    """A sentencepiece vocabulary (GGUF `tokenizer.ggml.model` = "llama": Llama 2, Mistral, TinyLlama...) as a
    BPE over "▁"-for-space text with byte fallback, the way llama.cpp and transformers tokenise it.

    Such files carry token scores instead of merges: every split of a token into two vocabulary pieces is
    a merge ranked by the token's score, best first (ties: longer left piece, then longer right piece).
    """
    tokens = list(vocab)
    if not merges:
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens):
            raise CheckpointError(f"{where}: a sentencepiece vocabulary needs tokenizer.ggml.scores (one per token)")
        ranked: list[tuple[str, str, float]] = []
        for token, score in zip(tokens, scores, strict=True):
            pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
            pairs.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
            ranked += [(a, b, float(score)) for a, b in pairs]
        ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
        merges = [(a, b) for a, b, _ in ranked]
    unk_id = meta.get("tokenizer.ggml.unknown_token_id", 0)
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))  # "hi" is "▁hi" unless told otherwise
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never",
                                                 split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence([*steps, decoders.Strip(content=" ", left=1, right=0)] if prefix else steps)
    return tok


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)
