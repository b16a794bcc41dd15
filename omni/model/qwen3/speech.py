"""Qwen3-Omni speech output for one conversation: Thinker outputs -> Talker frames -> streaming Code2Wav PCM.

`Qwen3SpeakingSession` holds the Talker's per-session state (its user track persists across turns; each reply's
positions leave the cache when the reply ends, as the reference rebuilds the Talker's input from the user turns for
every reply) and one Code2Wav stream per reply. The caller feeds what its Thinker computed:
* `feed_user_turn` for each user turn (token ids, Thinker input embeddings, Thinker hidden states after layer
  `accept_hidden_layer`, media sizes for the TM-RoPE ids);
* `begin_reply` once the first reply token exists, `push_text` per further reply token, `end_text` at the end;
* `pump()` between those: it runs every Talker frame that can run now and yields the PCM chunks they complete
  (with the default 1-frame first chunk, audio follows the first frame: 1365 samples, 57 ms at 24 kHz).
`stop()` is barge-in: queued text, frames waiting for their chunk and the reply's Talker positions are dropped;
the session is ready for the next user turn. The speaker is chosen by name (`talker_config.speaker_id`).
`pump_steps` yields each Talker step and each due Code2Wav chunk as a `PoolStep`: given a shared
`StreamingCode2Wav` (`code2wav`), the chunks of sessions due together decode as one batched call
(omni/model/code2wav/streaming.py `decode`); without one, every chunk runs alone.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from omni.model.code2wav import Code2Wav, Code2WavConfig, Code2WavStreamState, StreamingCode2Wav, load_code2wav
from omni.model.errors import CheckpointError, ConfigError
from omni.model.lm.batch import BatchedDecoder, PoolStep, run_alone
from omni.model.lm.kv_cache import CacheConfig
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders.hf import SafetensorsIndex
from omni.model.qwen3.config import Qwen3OmniConfig, Qwen3TalkerConfig
from omni.model.qwen3.talker import Qwen3Talker, Qwen3TalkerState, build_qwen3_talker, read_speech_config
from omni.model.tmrope import rope_index
from omni.model.token2wav.streaming import PCMChunk

DEFAULT_SPEAKER = "ethan"  # the reference generate()'s default voice


@dataclass
class Qwen3SpeechModels:
    """Everything Qwen3-Omni speech output needs besides the Thinker (shared by all sessions)."""

    config: Qwen3OmniConfig
    talker: Qwen3Talker
    code2wav: Code2Wav

    @property
    def talker_config(self) -> Qwen3TalkerConfig:
        assert self.config.talker is not None
        return self.config.talker

    @property
    def speakers(self) -> list[str]:
        return sorted(self.talker_config.speaker_id)


def load_qwen3_speech(
    directory: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    index: SafetensorsIndex | None = None,
    code2wav_dtype: torch.dtype = torch.float32,
) -> Qwen3SpeechModels:
    """Talker (in `dtype`) and Code2Wav (float32 by default, see `load_code2wav`) of a Qwen3-Omni checkpoint
    directory; a thinker-only checkpoint (-Thinking, -Captioner) is refused with a clear error."""
    d, cfg = read_speech_config(directory)
    assert cfg.talker is not None and cfg.code2wav_config is not None
    index = index or SafetensorsIndex(d)
    if index.get("talker.codec_head.weight") is None:
        raise CheckpointError(f"{d}: config.json has a talker_config but the weights hold no talker.* tensors")
    try:
        c2w_cfg = Code2WavConfig.from_hf_config(cfg.code2wav_config)
    except ConfigError as e:
        raise CheckpointError(f"{d}/config.json: {e}") from None
    talker = build_qwen3_talker(cfg.talker, index.get, dtype, device)
    code2wav = load_code2wav(c2w_cfg, list(index.files), index.get, device=device, dtype=code2wav_dtype)
    return Qwen3SpeechModels(config=cfg, talker=talker, code2wav=code2wav)


@dataclass
class Qwen3SpeechSettings:
    speaker: str = DEFAULT_SPEAKER
    first_chunk_frames: int = 1  # frames before the first audio (vLLM-Omni's initial_codec_chunk_frames)
    chunk_frames: int = 1  # frames per later chunk (batches Code2Wav work; never changes the audio)
    sampling: SamplingConfig | None = None  # codebook 0; None: the reference's (talker_sampling)
    predictor_sampling: SamplingConfig | None = None  # codebooks 1..15; None: the reference's
    seed: int | None = None


class Qwen3SpeakingSession:
    """One conversation's speech output over shared `Qwen3SpeechModels` (see the module docstring)."""

    def __init__(self, models: Qwen3SpeechModels, thinker_embeddings: torch.Tensor,
                 settings: Qwen3SpeechSettings | None = None, cache: CacheConfig | None = None,
                 pool: BatchedDecoder | None = None, sid: int | None = None,
                 predictor_pool: BatchedDecoder | None = None, predictor_sid: int | None = None,
                 code2wav: StreamingCode2Wav | None = None) -> None:
        """thinker_embeddings: the Thinker's input embedding table [V_text, E] (for the TTS specials). `pool`,
        `sid`: the Talker decoder's cache is row `sid` of this pool (`predictor_pool`, `predictor_sid`: the code
        predictor's), so `pump_steps` can batch their steps (`Qwen3Talker.init_state`); `code2wav`: a streamer
        shared with other sessions, the pool of this session's Code2Wav chunks (they batch with theirs)."""
        self.models = models
        self.settings = settings or Qwen3SpeechSettings()
        cfg, talker = models.config, models.talker
        texts = talker.texts(thinker_embeddings, cfg.tts_pad_token_id, cfg.tts_bos_token_id, cfg.tts_eos_token_id)
        s = self.settings
        self.state: Qwen3TalkerState = talker.init_state(
            texts, models.talker_config.speaker(s.speaker), sampling=s.sampling, predictor=s.predictor_sampling,
            seed=s.seed, cache=cache, pool=pool, sid=sid, predictor_pool=predictor_pool, predictor_sid=predictor_sid)
        if code2wav is not None and code2wav.model is not models.code2wav:
            raise ValueError("the shared Code2Wav streamer decodes with another model than the session's")
        self._shared_code2wav = code2wav
        self.streamer = StreamingCode2Wav(models.code2wav, s.first_chunk_frames, s.chunk_frames)  # its chunk sizes
        self.wav: Code2WavStreamState | None = None
        self.frames: list[torch.Tensor] = []  # this reply's frames [Q], in order

    # ---- speaker ---------------------------------------------------------------------------------------

    @property
    def speaker_id(self) -> dict[str, int]:
        return dict(self.models.talker_config.speaker_id)

    def set_speaker(self, name: str) -> None:
        """Choose the voice by name (case-insensitive); takes effect at the next reply."""
        self.state.speaker = self.models.talker_config.speaker(name)
        self.settings.speaker = name.lower()

    # ---- the user track ------------------------------------------------------------------------------

    def feed_user_turn(
        self,
        ids: torch.Tensor,
        embeds: torch.Tensor,
        hidden: torch.Tensor,
        audio_tokens: Sequence[int] = (),
        image_grids: Sequence[Sequence[int]] = (),
        video_grids: Sequence[Sequence[int]] = (),
        seconds_per_grid: Sequence[float] = (),
        use_audio_in_video: bool = False,
    ) -> None:
        """One user turn (from its <|im_start|> to the next one): token ids [T], Thinker input embeddings
        [T, E] and hidden states [T, E] after layer accept_hidden_layer; media sizes as `rope_index` takes
        them. Positions continue after the previous user turns, as over their concatenation."""
        tk = self.models.talker_config
        ids = ids.reshape(-1)
        media = torch.isin(ids, torch.tensor([tk.audio_token_id, tk.image_token_id, tk.video_token_id]))
        pos = rope_index(ids, self.models.config.thinker.tokens, tk.rope, audio_tokens, image_grids, video_grids,
                         seconds_per_grid, use_audio_in_video)
        talker = self.models.talker
        pos = pos + self.state.decoder.next_position
        talker.feed_user(self.state, talker.user_slots(embeds, hidden, media), pos)

    # ---- one reply -----------------------------------------------------------------------------------

    @property
    def replying(self) -> bool:
        return self.wav is not None

    def begin_reply(self, head: torch.Tensor, first_text: torch.Tensor) -> None:
        """The reply's first token exists: `head` [3, E] = embeddings of <|im_start|>, the assistant role
        token and "\\n", `first_text` [E] = the first reply token's embedding. Then `pump()`."""
        if self.wav is not None:
            raise ValueError("begin_reply during a reply: stop() or finish it first")
        self.models.talker.begin_reply(self.state, head, first_text)
        self.wav = self.streamer.init_state()
        self.frames = []

    def push_text(self, embed: torch.Tensor) -> None:
        """The next reply token's Thinker input embedding [E]."""
        self.models.talker.push_text(self.state, embed)

    def end_text(self) -> None:
        """The Thinker's reply ended (its end token is not pushed)."""
        self.models.talker.end_text(self.state)

    def pump(self, max_frames: int | None = None) -> Iterator[PCMChunk]:
        """Run the Talker frames that can run now (at most `max_frames`) and yield the PCM they complete; at the
        Talker's end (EOS or the frame limit) the stream is flushed and the reply closed."""
        return run_alone(self.pump_steps(max_frames))

    def pump_steps(self, max_frames: int | None = None) -> Generator[PCMChunk | PoolStep, Any, None]:
        """`pump`, yielding each frame's decode steps and each due Code2Wav chunk as a `PoolStep` for its driver to
        run (alone or batched with other sessions', omni/model/lm/batch.py `run_steps`)."""
        talker, st = self.models.talker, self.state
        done = 0
        while self.wav is not None and talker.can_step(st) and (max_frames is None or done < max_frames):
            frame = yield from talker.step_steps(st)
            done += 1
            if frame is not None:
                self.frames.append(frame)
                if self.streamer.push(self.wav, frame):
                    yield from self._decode_chunk(self.wav)
            if st.done:
                if self.streamer.finish(self.wav):
                    yield from self._decode_chunk(self.wav)
                self._close()

    def _decode_chunk(self, wav: Code2WavStreamState) -> Generator[PCMChunk | PoolStep, Any, None]:
        """The stream's due chunk as a `PoolStep` for the driver to decode alone or with other sessions' of the shared
        streamer (Code2Wav keeps no rows: sid 0 whenever the streamer is shared), then its PCM."""
        shared = self._shared_code2wav
        step = PoolStep(shared, None if shared is None else 0, wav, partial(_decode_alone, self.streamer, wav))
        yield from (yield step)

    def stop(self) -> None:
        """Barge-in: drop queued text, frames not yet decoded and the reply's Talker positions."""
        self._close()

    def _close(self) -> None:
        self.models.talker.end_reply(self.state)
        self.wav = None


def _decode_alone(streamer: StreamingCode2Wav, wav: Code2WavStreamState) -> list[PCMChunk]:
    """A Code2Wav chunk alone (a chunk `PoolStep`'s `alone`): `Code2Wav.step` on the stream's buffered frames."""
    return streamer.decode([wav])[0]
