"""Prompt building for the Thinker: ChatML turns with the model's special tokens and media placeholders.

The layout is what Qwen2.5-Omni's chat template and processor produce:

    <|im_start|>system\n{system}<|im_end|>\n
    <|im_start|>user\n <|audio_bos|><|AUDIO|>*n<|audio_eos|> <|vision_bos|><|IMAGE|>*n<|vision_eos|> text <|im_end|>\n
    <|im_start|>assistant\n

A video is <|vision_bos|><|VIDEO|>*n<|vision_eos|>; a video with its audio track is
<|vision_bos|><|audio_bos|> [video chunk 0][audio chunk 0][video chunk 1]... <|audio_eos|><|vision_eos|>,
chunked by 2 s of TMRoPE time (see omni/model/tmrope.py). Speech output needs the system prompt below verbatim
(the released model may not speak otherwise; shared/reference/qwen_omni.md section 1.7).

Qwen3-Omni's template has the same shape with other token texts (<|audio_start|><|audio_pad|><|audio_end|>,
<|vision_start|><|image_pad|><|vision_end|>, <|video_pad|>) and its own video-with-audio order (merged by
temporal id, omni/model/tmrope.py); `PromptBuilder` takes the family's `MediaTokenText` and TMRoPE style
(omni/model/qwen3/prompt.py builds the Qwen3 one).

Text is tokenised between special tokens only, so prompts built piece by piece (as a live session
prefills them) give the same ids as the whole rendered prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

from omni.model.lm.tokenizer import TextTokenizer
from omni.model.tmrope import MultimodalTokenIds, TMRoPEConfig, audio_in_video_layout

SPEECH_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory "
    "and visual inputs, as well as generating text and speech."
)

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class MediaTokenText:
    """The text of each media placeholder and boundary token in a family's tokenizer (field names as in
    MultimodalTokenIds)."""

    audio: str
    image: str
    video: str
    audio_start: str
    audio_end: str
    vision_start: str
    vision_end: str


QWEN2_5_MEDIA_TEXT = MediaTokenText(
    audio="<|AUDIO|>",
    image="<|IMAGE|>",
    video="<|VIDEO|>",
    audio_start="<|audio_bos|>",
    audio_end="<|audio_eos|>",
    vision_start="<|vision_bos|>",
    vision_end="<|vision_eos|>",
)


class PromptError(ValueError):
    """A prompt that cannot be built (unknown role, tokenizer without the model's special tokens)."""


@dataclass(frozen=True)
class PromptBuilder:
    """Token ids of prompt pieces for one tokenizer; holds no conversation state."""

    tokenizer: TextTokenizer
    ids: MultimodalTokenIds
    rope: TMRoPEConfig
    media_text: MediaTokenText = QWEN2_5_MEDIA_TEXT
    family: str = "Qwen2.5-Omni"

    def __post_init__(self) -> None:
        wanted = CHATML_TOKENS + astuple(self.media_text)
        missing = [t for t in wanted if self.tokenizer.tokenizer.token_to_id(t) is None]
        if missing:
            raise PromptError(f"the tokenizer lacks the {self.family} special tokens {missing}")
        mine = {getattr(self.media_text, f.name): getattr(self.ids, f.name) for f in fields(self.media_text)}
        for text, tid in mine.items():
            if self.tokenizer.tokenizer.token_to_id(text) != tid:
                raise PromptError(
                    f"tokenizer maps {text} to {self.tokenizer.tokenizer.token_to_id(text)}, config.json says {tid}"
                )

    def text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def turn_start(self, role: str) -> list[int]:
        if role not in ("system", "user", "assistant"):
            raise PromptError(f"unknown role {role!r}; expected system, user or assistant")
        return self.text(f"<|im_start|>{role}\n")

    def turn_end(self) -> list[int]:
        return self.text("<|im_end|>\n")

    def generation_prompt(self) -> list[int]:
        """Closes the user turn and opens the assistant's."""
        return self.turn_end() + self.turn_start("assistant")

    def system_turn(self, prompt: str = SPEECH_SYSTEM_PROMPT) -> list[int]:
        return self.turn_start("system") + self.text(prompt) + self.turn_end()

    def audio(self, n_tokens: int) -> list[int]:
        return [self.ids.audio_start] + [self.ids.audio] * n_tokens + [self.ids.audio_end]

    def image(self, grid: Sequence[int]) -> list[int]:
        return [self.ids.vision_start] + [self.ids.image] * self._merged(grid) + [self.ids.vision_end]

    def video(self, grid: Sequence[int]) -> list[int]:
        return [self.ids.vision_start] + [self.ids.video] * self._merged(grid) + [self.ids.vision_end]

    def video_with_audio(self, grid: Sequence[int], seconds_per_grid: float, n_audio: int) -> list[int]:
        lay = audio_in_video_layout(0, n_audio, grid, seconds_per_grid, self.rope)
        body = [self.ids.video if v else self.ids.audio for v in lay.is_video.tolist()]
        return [self.ids.vision_start, self.ids.audio_start] + body + [self.ids.audio_end, self.ids.vision_end]

    def _merged(self, grid: Sequence[int]) -> int:
        t, h, w = (int(g) for g in grid)
        return t * h * w // self.rope.spatial_merge_size**2
