"""A session's `respond_steps` driven one `PoolStep` at a time, as a batching test drives several side by side."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import torch

from omni.model.conversation import ReplyRecord
from omni.model.lm.batch import PoolStep
from omni.model.token2wav.streaming import PCMChunk


class StepReply:
    """`gen` advanced to its next `PoolStep` (events collected on the way); `is_token(step)`: a Thinker step, whose
    item is the reply token it feeds (kept in `tokens`)."""

    def __init__(self, gen: Generator[Any, Any, None], is_token: Callable[[PoolStep], bool]) -> None:
        self.gen = gen
        self.is_token = is_token
        self.send: Any = None
        self.record: ReplyRecord | None = None
        self.tokens: list[int] = []
        self.pcm: list[PCMChunk] = []
        self.done = False
        self.step = self.next_step()  # the step it waits for (None: done)

    def next_step(self) -> PoolStep | None:
        with torch.inference_mode():
            while True:
                try:
                    x = self.gen.send(self.send)
                except StopIteration:
                    self.done = True
                    return None
                self.send = None
                if isinstance(x, PoolStep):
                    if self.is_token(x):
                        assert isinstance(x.item, int)
                        self.tokens.append(x.item)
                    return x
                if isinstance(x, ReplyRecord):
                    self.record = x
                elif isinstance(x, PCMChunk):
                    self.pcm.append(x)
