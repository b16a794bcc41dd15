"""Qwen3-Omni chat prompt: the ChatML layout of omni/model/prompt.py with Qwen3-Omni's token texts and ids.

The released chat template renders a user turn as
    <|im_start|>user\\n <|audio_start|><|audio_pad|>*n<|audio_end|> <|vision_start|><|image_pad|>*n<|vision_end|>
    <|vision_start|><|video_pad|>*n<|vision_end|> text <|im_end|>\\n
and a video with its audio track as <|vision_start|><|audio_start|> [video and audio tokens merged by temporal
id, video first on ties] <|audio_end|><|vision_end|> (shared/reference/qwen_omni.md section 2.4). Unlike
Qwen2.5-Omni, speech output does not depend on a fixed system prompt; the template adds no system turn
by default. The talker, not the prompt, selects the voice (talker_config.speaker_id).

Top-level ids the Talker needs to split turns (im_start, role words, tts_pad/bos/eos) are in
`Qwen3OmniConfig`; `SpecialIds` gathers them with the token texts for the assembly.
"""

from __future__ import annotations

from dataclasses import dataclass

from omni.model.lm.tokenizer import TextTokenizer
from omni.model.prompt import MediaTokenText, PromptBuilder, PromptError
from omni.model.qwen3.config import Qwen3OmniConfig, Qwen3ThinkerConfig

QWEN3_MEDIA_TEXT = MediaTokenText(
    audio="<|audio_pad|>",
    image="<|image_pad|>",
    video="<|video_pad|>",
    audio_start="<|audio_start|>",
    audio_end="<|audio_end|>",
    vision_start="<|vision_start|>",
    vision_end="<|vision_end|>",
)
# Text-side tokens of the Talker's input track (tts_pad_token_id, tts_bos_token_id, tts_eos_token_id).
TTS_TEXT = {"tts_pad": "<tts_pad>", "tts_bos": "<tts_text_bos>", "tts_eos": "<tts_text_eod>"}


def prompt_builder(tokenizer: TextTokenizer, thinker: Qwen3ThinkerConfig) -> PromptBuilder:
    """A PromptBuilder whose placeholders, ids and video-with-audio order are Qwen3-Omni's; PromptError when
    the tokenizer's special tokens do not match config.json."""
    return PromptBuilder(tokenizer, thinker.tokens, thinker.rope, QWEN3_MEDIA_TEXT, "Qwen3-Omni")


@dataclass(frozen=True)
class SpecialIds:
    """The ChatML and TTS ids of a Qwen3-Omni checkpoint, checked against its tokenizer."""

    im_start: int
    im_end: int
    system: int
    user: int
    assistant: int
    tts_pad: int
    tts_bos: int
    tts_eos: int

    @classmethod
    def from_config(cls, cfg: Qwen3OmniConfig) -> SpecialIds:
        return cls(
            cfg.im_start_token_id,
            cfg.im_end_token_id,
            cfg.system_token_id,
            cfg.user_token_id,
            cfg.assistant_token_id,
            cfg.tts_pad_token_id,
            cfg.tts_bos_token_id,
            cfg.tts_eos_token_id,
        )

    def check(self, tokenizer: TextTokenizer) -> None:
        """PromptError naming each token whose id in the tokenizer differs from config.json's."""
        want = {
            "<|im_start|>": self.im_start,
            "<|im_end|>": self.im_end,
            TTS_TEXT["tts_pad"]: self.tts_pad,
            TTS_TEXT["tts_bos"]: self.tts_bos,
            TTS_TEXT["tts_eos"]: self.tts_eos,
        }
        wrong = [f"{t}: tokenizer {tokenizer.tokenizer.token_to_id(t)}, config.json {i}" for t, i in want.items()
                 if tokenizer.tokenizer.token_to_id(t) != i]
        for role, i in (("system", self.system), ("user", self.user), ("assistant", self.assistant)):
            if tokenizer.encode(role) != [i]:
                wrong.append(f"{role!r}: tokenizer {tokenizer.encode(role)}, config.json [{i}]")
        if wrong:
            raise PromptError("Qwen3-Omni special ids disagree: " + "; ".join(wrong))
