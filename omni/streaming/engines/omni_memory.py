"""The omni engine's memory: what the Thinker heard and saw goes into L1 as pooled encoder features, and each
turn's recall comes back into the prompt as text and as those features (issue 12; memory.md 5.1-5.3).

Write path (on the device worker, bookkeeping only; `MemoryLane` hands records to the memory's writer thread):
every audio block and video patch the Thinker was fed (`ThinkerSession.take_encoded`, at the end of each segment,
after the live segment's re-flooring can no longer change a block) is pooled and added to the user's memory:
- audio: one 2-s block (50 tokens) -> 5 tokens, each the mean of 400 ms (omni/memory/segmenter.py keeps 4 keys per
  audio lane per event);
- video: one temporal patch (1 s at 2 fps, lh x lw merged tokens) -> a 4 x 4 grid, 16 tokens (memory.md 5.1's
  16 tokens a frame); re-entered it is an image of grid (1, 4 * merge, 4 * merge). An image shown with a typed turn
  (`push_media`) is kept the same way, as a one-frame patch; a video clip's patches as a live video's.
Both are the encoders' outputs, which the encoders project into the Thinker's input embedding space.

Read path, at the end of each user turn, before <|im_start|>assistant: the question is represented the way the
stored keys are: the mean of the Thinker's input embeddings of what the user said, typed and showed this turn (audio
encoder tokens, typed-text token embeddings, the vision tokens of images and clips pushed into the turn; not the
ambient camera), unit length, in the same space as every salient key (which are unit rows of the pooled encoder
tokens). That vector queries both feature lanes (omni.memory.recall: the max cosine over an event's salient keys), and
the text items too: the memory keys its L3 notes (facts, dialogue turns) and L2 summaries also in the "thinker"
text space (`ThinkerTextKeys`: the unit mean of the item's token embeddings, omni.memory.user_index `text_spaces`), so a
spoken question, which has no transcript in this engine (the Thinker hears the audio itself), still reaches a typed
fact. A typed question is also embedded by the memory's text embedder (MiniLM) for the text items. (The cosine of
mean embeddings is a coarse match; its floor, RecallConfig.min_space_score, is not yet tuned on a trained
checkpoint.) Recalled items come
back in time order, each as its timestamped line followed by its evidence frames in time order (consecutive
audio frames joined into one <|audio_bos|> ... <|audio_eos|> stretch, video frames as images), placed as a system
turn between the user's turn and the assistant's (`ThinkerSession.end_user_turn`): the cache already holds the
question, so the slot follows it. Its TMRoPE ids are new ids above the history, as for any prompt piece, so the
distances the cache sees stay under its window (+ sinks), inside the trained range (memory.md 5.3); the slot is
bounded by `budget_tokens` counted with the Thinker's tokenizer (features: one token each; the 2 bos/eos
tokens around each stretch or frame come on top) and stays in the history, as the prompt the reply was made from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from omni.memory import Recall
from omni.model.conversation import EncodedPiece, RecalledFeatures, SlotPiece
from omni.model.loaders.omni import LoadedThinker
from omni.model.qwen3.loader import LoadedQwen3
from omni.streaming.memory_lane import MemoryLane

AUDIO_TOKENS_PER_BLOCK = 5  # 50 encoder tokens (2 s) -> 5, one per 400 ms
VIDEO_GRID = (4, 4)  # lh x lw merged tokens of a patch -> 4 x 4 = 16
DEFAULT_BUDGET = 512  # slot tokens: ~4 items with +-2 s of evidence (3 audio blocks = 15, 5 frames = 80)
THINKER_SPACE = "thinker"  # the text key space of the Thinker's input embeddings (omni.memory.user_index text_spaces)


class ThinkerTextKeys:
    """`embed(texts) -> [n, C]`: each text's key in the Thinker's input space, the mean of its token embeddings (the
    same representation the question's typed part gets, `OmniEngineSession.push_text`), for the memory's
    `text_spaces`. Runs on the memory's writer thread like its MiniLM: a table lookup, read-only on the weights."""

    def __init__(self, thinker: LoadedThinker | LoadedQwen3) -> None:
        self.embed_tokens = thinker.model.lm.embed_tokens
        self.text_ids = thinker.prompt.text
        self.device = thinker.model.device

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        with torch.inference_mode():
            for text in texts:
                ids = self.text_ids(text)
                if not ids:
                    raise ValueError("a Thinker text key needs a non-empty text")
                x = self.embed_tokens(torch.tensor(ids, device=self.device))
                rows.append(x.float().mean(0).cpu())
        return torch.stack(rows).numpy()


def pool_piece(piece: EncodedPiece) -> np.ndarray:
    """[N, C] float32 pooled tokens of one audio block or video patch (module docstring)."""
    x = piece.tokens.detach().float().cpu()
    if piece.kind == "audio":
        return F.adaptive_avg_pool1d(x.T[None], AUDIO_TOKENS_PER_BLOCK)[0].T.numpy()
    lh, lw = piece.grid_hw
    if lh * lw != x.shape[0]:
        raise ValueError(f"a video patch of {x.shape[0]} tokens is not its {lh} x {lw} grid")
    grid = x.T.reshape(1, x.shape[1], lh, lw)
    return F.adaptive_avg_pool2d(grid, VIDEO_GRID)[0].reshape(x.shape[1], -1).T.contiguous().numpy()


class OmniMemory:
    """One omni session's memory: its lane plus the open turn's question vector. Call from the device worker."""

    def __init__(self, lane: MemoryLane, merge: int, budget_tokens: int = DEFAULT_BUDGET) -> None:
        if budget_tokens <= 0:
            raise ValueError(f"the recalled-memory slot needs a positive budget, got {budget_tokens}")
        self.lane = lane
        self.merge = merge
        self.budget_tokens = budget_tokens
        self._q_sum: torch.Tensor | None = None  # [C] sum of the turn's input embeddings
        self._q_count = 0
        self.turn_start: float | None = None  # media time of the turn's first input
        self.last_slot: list[SlotPiece] = []  # what the last turn's slot fed (tests, diagnostics)

    def ingest(self, pieces: Sequence[EncodedPiece], t0: float, asked: bool = False) -> None:
        """Pooled pieces of a segment that started at media time `t0` go to L1. The audio joins the question, and so
        does video when `asked` (an image or clip the user pushed into the turn; not the ambient camera)."""
        if pieces and self.turn_start is None:
            self.turn_start = t0
        for p in pieces:
            self.lane.add_frame(p.kind, t0 + p.offset_s, pool_piece(p))
            self.lane.track_media(p.kind, p.tokens.shape[0], t0 + p.offset_s, p.cache_at)  # L0 until the window passes
            if p.kind == "audio" or asked:
                self._question(p.tokens)

    def typed(self, embeddings: torch.Tensor, t: float) -> None:
        """Token embeddings [n, C] of typed text of the turn (the question's text part)."""
        if self.turn_start is None:
            self.turn_start = t
        self._question(embeddings)

    def _question(self, x: torch.Tensor) -> None:
        s = x.detach().float().sum(0).cpu()
        self._q_sum = s if self._q_sum is None else self._q_sum + s
        self._q_count += x.shape[0]

    def slot(self, question_text: str, count_tokens: Callable[[str], int]) -> list[SlotPiece]:
        """Recall for the turn that ends now and the slot's pieces (empty when nothing was recalled)."""
        q = None if self._q_sum is None else (self._q_sum / max(self._q_count, 1)).numpy()
        lanes = {} if q is None else {"audio": q, "video": q}
        before = self.turn_start
        self._q_sum, self._q_count, self.turn_start = None, 0, None
        if q is None and not question_text.strip():
            self.last_slot = []
            return []
        spaces = {} if q is None else {THINKER_SPACE: q}
        recall = self.lane.recall(question_text, lanes, self.budget_tokens, count_tokens, before=before,
                                  text_spaces=spaces)
        self.last_slot = slot_pieces(recall, self.merge)
        return self.last_slot


def slot_pieces(recall: Recall, merge: int) -> list[SlotPiece]:
    """The slot of `recall`: its header, then per item (time order) its line and its frames (time order)."""
    if not recall.items:
        return []
    lines = recall.text.splitlines()
    pieces: list[SlotPiece] = [lines[0] + "\n"]
    grid = (1, VIDEO_GRID[0] * merge, VIDEO_GRID[1] * merge)
    for item, line in zip(recall.items, lines[1:], strict=True):
        pieces.append(line + "\n")
        frames = sorted(
            (float(t), lane, tokens)
            for lane, stack in item.features.items()
            for t, tokens in zip(item.feature_times[lane], stack, strict=True)
        )
        audio: list[torch.Tensor] = []
        for _, lane, tokens in frames:
            x = torch.from_numpy(np.asarray(tokens, dtype=np.float32))
            if lane == "audio":
                audio.append(x)
                continue
            if audio:
                pieces.append(RecalledFeatures("audio", torch.cat(audio)))
                audio = []
            pieces.append(RecalledFeatures("image", x, grid))
        if audio:
            pieces.append(RecalledFeatures("audio", torch.cat(audio)))
    return _join_text(pieces)


def _join_text(pieces: list[SlotPiece]) -> list[SlotPiece]:
    """Adjacent text pieces as one (text is tokenised between special tokens, as a whole prompt would be)."""
    out: list[SlotPiece] = []
    for p in pieces:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] = out[-1] + p
        else:
            out.append(p)
    return out
