"""A conversation with a text LM: history in the session's bounded cache, replies streamed as text.

Each turn prefills only what is new since the last turn: the chat template renders the whole history,
and when that text extends what the cache already holds (true for ChatML-style templates), only the
suffix is tokenised and fed. Otherwise the cache is reset and the whole prompt is fed again.

`messages` stays as long as the cache's window: after each reply, messages whose every token has left the window
(not the leading system message, which the cache's sinks and the template keep first) are dropped, and the
fed text is re-based so the next turn still prefills only what is new. A caller that keeps memory writes what
leaves the window below before it goes (the embedded engine's memory lane watches the cache, `KVCache.watch`,
and is told before each forward that moves the window's start, so a message dropped here was written to L3
first). With a template where dropping a message changes the rest of the rendering, nothing is dropped.

Bounded steps (`prefill_chunk`): a prompt is fed at most that many tokens per step, so that a caller running each
step as one job of a worker shared with other conversations lets their jobs run between the chunks (issue 16: one
200 KB prompt held every other session for 213 s). `stream_reply` yields "" between chunks; `prefill_history`
feeds at most `max_tokens` a call and keeps the rest (`backlog`) for its next call or the next reply.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from omni.model.lm.detokenizer import IncrementalDetokenizer
from omni.model.lm.end_of_turn import end_probability, end_token_ids, open_words
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplerState, SamplingConfig, sample
from omni.model.lm.tokenizer import Message
from omni.model.loaders import LoadedLM

__all__ = ["ChatSession", "ReplyStats"]


@dataclass
class ReplyStats:
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    new_tokens: int = 0
    decode_seconds: float = 0.0
    first_token_seconds: float = 0.0  # from the call to the first generated token
    finished: bool = False  # ended on a stop token (not max_new_tokens or cancellation)

    @property
    def decode_tokens_per_second(self) -> float:
        return self.new_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0


@dataclass
class _Fed:
    text: str = ""  # the rendered prompt text whose tokens the cache holds
    length: int = 0  # cache length at the end of that text
    # kept where the cache may roll back to this point: the next position and the sampler's seen tokens then
    position: int = 0
    seen: torch.Tensor | None = None


class ChatSession:
    """One conversation. Not thread-safe: drive it from one worker at a time."""

    def __init__(
        self, lm: LoadedLM, system_prompt: str | None = None, sampling: SamplingConfig | None = None,
        cache: CacheConfig | None = None, penalise_context: bool = False, prefill_chunk: int | None = None,
    ) -> None:
        """`penalise_context`: whether the repetition penalty counts the tokens of a turn's `context` (recalled
        memory) as it counts the rest of the prompt; off by default (`_feed`). `prefill_chunk`: the most prompt
        tokens fed in one step (None: a whole prompt at once)."""
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be positive, got {prefill_chunk}")
        self.lm = lm
        self.prefill_chunk = prefill_chunk
        tok = lm.tokenizer
        base = sampling or SamplingConfig()
        stops = base.stop_token_ids or tok.stop_token_ids
        self.sampling = SamplingConfig(**{**base.__dict__, "stop_token_ids": frozenset(stops)})
        self.state = lm.model.init_state(cache)
        self.sampler = SamplerState.create(lm.model.cfg.vocab_size, seed=self.sampling.seed, device=lm.model.device)
        self.messages: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self._ends: list[int] = [0] * len(self.messages)  # per message: cache length once it was fed (an upper bound)
        self._fed = _Fed()
        self._before_reply = _Fed()  # the cache's contents just before the last reply's tokens
        self._before_turn: _Fed | None = None  # set while a speculative user turn is in the cache
        self._backlog: list[int] = []  # tokens of the fed text not in the cache yet (a history prefill in chunks)
        self.last = ReplyStats()
        self.penalise_context = penalise_context
        self.end_probability: float | None = None  # set by prefill_turn(score_end=True)
        self._end_ids: list[int] | None = None  # omni.model.lm.end_of_turn.end_token_ids, made on first use

    def _feed(self, ids: list[int], context: str = "") -> torch.Tensor:
        """Run `ids` through the model. The repetition penalty's seen tokens gain them, less one occurrence of each
        token of `context` (quoted material such as recalled memory: the penalty is there to stop the reply looping,
        and it turned a recalled "October 9" into "October 7", see `stream_reply`)."""
        self._observe(ids, context)
        return self._run(ids)

    def _run(self, ids: list[int]) -> torch.Tensor:
        """The model on `ids` (the repetition penalty not told: `_feed` does that)."""
        out = self.lm.model(self.state, input_ids=torch.tensor([ids], device=self.lm.model.device))
        assert out.logits is not None
        return out.logits

    def _observe(self, ids: list[int], context: str) -> None:
        """Mark `ids` seen for the repetition penalty, less one occurrence of each token of `context` (`_feed`)."""
        if context and not self.penalise_context:
            left = Counter(ids)
            left.subtract(self.lm.tokenizer.encode(context))
            ids = [t for t, n in left.items() if n > 0]
        if ids:
            self.sampler.observe(torch.tensor([ids], device=self.lm.model.device))

    def _unfed(self, text: str) -> str | None:
        """The part of the rendered `text` past what the cache holds, or None when the cache holds no prefix of it."""
        fed_length = self.state.cache.length + len(self._backlog)
        if self._fed.text and text.startswith(self._fed.text) and fed_length == self._fed.length:
            return text[len(self._fed.text) :]
        return None

    def _prompt_ids(self) -> list[int]:
        text = self.lm.tokenizer.render_chat(self.messages, add_generation_prompt=True)
        suffix = self._unfed(text)
        if suffix is None and self._before_turn is not None:  # a turn prefilled for another text: undo it
            self.drop_prefilled_turn()
            suffix = self._unfed(text)
        self._before_turn = None  # a turn prefilled for this text is kept, as part of the reply's prompt
        if suffix is None:  # the template rewrote earlier turns: start the cache over
            self.state.reset()
            self.sampler.seen.zero_()
            self._ends = [0] * len(self._ends)  # all fed again below; set with the new messages' ends
            self._backlog = []
            suffix = text
        self._fed = _Fed(text, self._fed.length)
        ids = [*self._backlog, *self.lm.tokenizer.encode(suffix)]
        self._backlog = []
        return ids

    @property
    def backlog(self) -> int:
        """Tokens of the history that `prefill_history` has yet to feed (the next reply feeds them otherwise)."""
        return len(self._backlog)

    @property
    def turn_start(self) -> int:
        """The cache index where the next user turn starts (before a speculative turn prefilled by `prefill_turn`)."""
        return self._before_turn.length if self._before_turn is not None else self.state.cache.length

    def prefill_history(self, max_tokens: int | None = None) -> int:
        """Feed whatever of the current history the cache does not hold yet (e.g. the system prompt, while
        the user is still speaking), so the next reply prefills only the new turn; at most `max_tokens` now,
        the rest (`backlog`) on the next calls. Returns tokens fed."""
        if not self._backlog:
            text = self.lm.tokenizer.render_chat(self.messages, add_generation_prompt=False) if self.messages else ""
            suffix = self._unfed(text)
            if suffix is None:
                if self._fed.text:  # the cache holds something else: leave it to the next reply to rebuild
                    return 0
                suffix = text
            self._backlog = self.lm.tokenizer.encode(suffix) if suffix else []
            self._fed = _Fed(text, self.state.cache.length + len(self._backlog))
        n = len(self._backlog) if max_tokens is None else min(max_tokens, len(self._backlog))
        if n:
            self._feed(self._backlog[:n])
            del self._backlog[:n]
        return n

    def prefill_turn(self, user_text: str, context: str = "", score_end: bool = False) -> int:
        """Feed the user's next message speculatively (e.g. at a pause, before the turn is known to be over):
        `stream_reply(user_text, context)` then prefills only the assistant header, while `drop_prefilled_turn`
        (the user went on speaking) rolls the cache back. The history must already be in the cache
        (`prefill_history`); returns tokens fed (0 when nothing could be). `score_end`: the feed stops once
        after the message's last word to set `end_probability`, how likely the LM thinks the message is finished
        there (omni.model.lm.end_of_turn; the same single forward call, plus the LM head on one more position);
        otherwise, and when nothing was fed, it is None."""
        self.drop_prefilled_turn()
        self.end_probability = None
        if not user_text.strip() or not self._fed.text or self._backlog:  # (the history is not all in the cache)
            return 0
        text = self.lm.tokenizer.render_chat([*self.messages, *_turn(user_text, context)],
                                             add_generation_prompt=False)
        suffix = self._unfed(text)
        if not suffix:
            return 0
        before = _Fed(self._fed.text, self._fed.length, self.state.next_position, self.sampler.seen.clone())
        words = open_words(user_text)
        at = text.rfind(words) if score_end and words else -1
        cut = at + len(words) - len(self._fed.text) if at >= 0 else -1
        if 0 < cut < len(suffix):  # the words' end, in the unfed part: read the LM's next token there
            head = self.lm.tokenizer.encode(suffix[:cut])
            ids = head + self.lm.tokenizer.encode(suffix[cut:])
            self.end_probability = self._feed_scored(ids, len(head) - 1, context)
        else:
            ids = self.lm.tokenizer.encode(suffix)
            self._feed(ids, context)
        self._before_turn = before
        self._fed = _Fed(text, self.state.cache.length)
        return len(ids)

    def _feed_scored(self, ids: list[int], at: int, context: str = "") -> float:
        """Feed `ids` in one forward call (a second would cost as much again: decode reads every weight once per
        call) and return the probability of the end-of-message tokens after `ids[at]`."""
        if self._end_ids is None:
            self._end_ids = end_token_ids(self.lm.tokenizer)
        x = torch.tensor([ids], device=self.lm.model.device)
        self._observe(ids, context)
        out = self.lm.model(self.state, input_ids=x, logits="none", return_hidden=True)
        assert out.hidden is not None
        with torch.inference_mode():  # (as the model's forward runs)
            return end_probability(self.lm.model.head(out.hidden[:, at]), self._end_ids)

    def drop_prefilled_turn(self) -> None:
        """Undo `prefill_turn` (nothing to do if no speculative turn is in the cache)."""
        if self._before_turn is not None:
            self._roll_back(self._before_turn)
            self._before_turn = None

    def _roll_back(self, to: _Fed) -> None:
        """Cache, positions, fed text and the repetition penalty's seen tokens as they were at `to`."""
        self.state.cache.truncate(to.length)
        self.state.next_position = to.position
        if to.seen is not None:
            self.sampler.seen.copy_(to.seen)
        self._fed = _Fed(to.text, to.length)
        self._backlog = []

    def stream_reply(self, user_text: str, context: str = "") -> Iterator[str]:
        """Yield the reply to user_text as text deltas. Closing the iterator early stops generation;
        the history then holds the text generated so far. `context` (e.g. recalled memory) goes in a system
        message just before the user's and stays in the history, as the prompt the reply was made from; its tokens
        are not counted by the repetition penalty (unless `penalise_context`): with them counted, SmolLM2-135M at
        penalty 1.1 answered "October 7" and "October 4" for a recalled "October 9" (benchmarks/fact_recall.py).
        With `prefill_chunk` set, "" comes between the chunks of the prompt (nothing to say yet)."""
        if not user_text.strip():
            raise ValueError("empty message: nothing to answer")
        self.messages.extend(_turn(user_text, context))
        t0 = time.perf_counter()
        ids = self._prompt_ids()
        chunk = self.prefill_chunk or len(ids)
        self._observe(ids, context)  # the whole prompt less its context, once: the chunks are fed unobserved
        try:
            logits = self._run(ids[:chunk])
            for start in range(chunk, len(ids), chunk):
                yield ""
                logits = self._run(ids[start : start + chunk])
        except BaseException:  # closed (or failed) between chunks: the cache holds part of the prompt
            self._forget_cache()
            raise
        self._fed.length = self.state.cache.length
        self._ends = [e or self._fed.length for e in self._ends]
        self._ends += [self._fed.length] * (len(self.messages) - len(self._ends))
        self._before_reply = _Fed(self._fed.text, self._fed.length, self.state.next_position,
                                  self.sampler.seen.clone())
        stats = ReplyStats(prompt_tokens=len(ids), prefill_seconds=time.perf_counter() - t0)
        detok = IncrementalDetokenizer(self.lm.tokenizer)
        cfg = self.sampling
        finished = False
        t1 = time.perf_counter()
        try:
            for _ in range(cfg.max_new_tokens):
                token = int(sample(logits, cfg, self.sampler)[0])  # the one host sync per token
                if token in cfg.stop_token_ids:
                    finished = True
                    break
                stats.new_tokens += 1
                delta = detok.push(token)
                if stats.first_token_seconds == 0.0:
                    stats.first_token_seconds = time.perf_counter() - t0
                logits = self._feed([token])
                if delta:
                    yield delta
        finally:
            stats.decode_seconds = time.perf_counter() - t1
            stats.finished = finished
            reply = detok.text()
            self.messages.append({"role": "assistant", "content": reply})
            self._ends.append(self.state.cache.length)
            self._fed = _Fed(self._fed.text + reply, self.state.cache.length)
            self.last = stats
            self._drop_gone()

    def _drop_gone(self) -> None:
        """Drop the messages whose tokens have all left the cache's window (module docstring)."""
        edge = self.state.cache.length - self.state.cache.cfg.window
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        k = first
        while k < len(self.messages) - 1 and self._ends[k] <= edge:
            k += 1
        if k == first:
            return
        render = self.lm.tokenizer.render_chat
        head_old = render(self.messages[:k], add_generation_prompt=False)
        whole_old = render(self.messages, add_generation_prompt=False)
        whole_new = render([*self.messages[:first], *self.messages[k:]], add_generation_prompt=False)
        rest = whole_old[len(head_old) :]
        if not whole_old.startswith(head_old) or not whole_new.endswith(rest):
            return  # this template renders later messages differently without the earlier ones
        head_new = whole_new[: len(whole_new) - len(rest)]
        saved = [f for f in (self._fed, self._before_reply, self._before_turn) if f is not None and f.text]
        if not all(f.text.startswith(head_old) for f in saved):
            return
        for f in saved:
            f.text = head_new + f.text[len(head_old) :]
        del self.messages[first:k], self._ends[first:k]

    def _forget_cache(self) -> None:
        """A reply given up in its prompt: the history keeps the turn with an empty reply (as one cancelled before
        its first token), the cache forgets everything and the next reply feeds the whole history again."""
        self.messages.append({"role": "assistant", "content": ""})
        self.state.reset()
        self.sampler.seen.zero_()
        self._ends = [0] * len(self.messages)
        self._fed, self._before_reply, self._before_turn, self._backlog = _Fed(), _Fed(), None, []

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self._ends = [0] * len(self.messages)
        self.state.reset()
        self.sampler.seen.zero_()
        self._fed = _Fed()
        self._before_reply = _Fed()
        self._before_turn = None
        self._backlog = []

    def reply(self, user_text: str) -> str:
        return "".join(self.stream_reply(user_text))

    def truncate_last_reply(self, kept_text: str) -> None:
        """Keep only `kept_text` of the last reply (what the user actually heard before barging in).

        The cache is rolled back to the start of the reply; the kept text is fed as part of the next turn.
        """
        if not self.messages or self.messages[-1]["role"] != "assistant":
            raise ValueError("there is no reply to truncate")
        self.messages[-1] = {"role": "assistant", "content": kept_text}
        self._roll_back(self._before_reply)


def _turn(user_text: str, context: str) -> list[Message]:
    """A user turn's messages: the optional context as a system message, then the user's."""
    ctx: list[Message] = [{"role": "system", "content": context}] if context.strip() else []
    return [*ctx, {"role": "user", "content": user_text}]
