"""`omni chat`: a terminal chat that streams the reply token by token.

Interactive on a terminal (multi-turn, /reset, /quit, tokens/s after each reply on stderr). With standard
input not a terminal it answers each non-empty input line and prints only the replies, one per line, so
other programs can use it: `echo "What is the capital of France?" | omni chat`.

With a Qwen2.5-Omni checkpoint directory, `--audio FILE`, `--image FILE` and `--video FILE` add media to the
first user turn (offline: each file is decoded, encoded and prefilled before the question), e.g.
`omni chat --model Qwen2.5-Omni-7B --audio question.wav --prompt "Answer the question."`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from app.lm_args import add_model_arguments, apply_threads, dtype_of

if TYPE_CHECKING:
    import torch

    from model.lm.chat_session import ChatSession
    from model.lm.sampling import SamplingConfig
    from model.loaders.omni import LoadedThinker
    from model.thinker_session import ThinkerSession


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="system prompt (default: the chat template's own)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--window", type=int, default=4096, help="attention window of the KV cache, in tokens")
    p.add_argument("--audio", default=None, help="audio file for the first turn (Qwen2.5-Omni checkpoints)")
    p.add_argument("--image", default=None, help="image file for the first turn (Qwen2.5-Omni checkpoints)")
    p.add_argument("--video", default=None, help="video file for the first turn, sampled at 2 fps")
    p.add_argument(
        "--audio-in-video",
        action="store_true",
        help="also use the video file's audio track, interleaved with its frames (TMRoPE)",
    )
    p.add_argument(
        "--speak",
        default=None,
        metavar="OUT.wav",
        help="also speak the replies (Qwen2.5-Omni checkpoints): 24 kHz WAV of every reply in turn",
    )
    p.add_argument("--voice", default=None, help="voice for --speak (default: the checkpoint's, Chelsie)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from model.lm.chat_session import ChatSession
    from model.lm.decoder import default_cache_config
    from model.lm.sampling import SamplingConfig
    from model.loaders import CheckpointError, load_lm

    if args.prompt is not None and not args.prompt.strip():
        print("omni chat: error: --prompt is empty: nothing to answer", file=sys.stderr)
        return 2
    try:
        apply_threads(args)
    except ValueError as e:
        print(f"omni chat: error: {e}", file=sys.stderr)
        return 2
    try:
        sampling = SamplingConfig(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        )
        interactive = args.prompt is None and sys.stdin.isatty()
        if interactive:
            print("loading model ...", file=sys.stderr, flush=True)
        if _wants_omni(args):
            return _run_omni(args, sampling, interactive)
        lm = load_lm(args.model, dtype=dtype_of(args), device=args.device)
    except (CheckpointError, ValueError) as e:
        print(f"omni chat: error: {e}", file=sys.stderr)
        return 1
    if interactive:
        print(
            f"loaded {lm.source} in {lm.load_seconds:.1f} s. /reset starts over, /quit or Ctrl-D ends.", file=sys.stderr
        )
    session = ChatSession(
        lm, system_prompt=args.system, sampling=sampling, cache=default_cache_config(lm.model.cfg, window=args.window)
    )
    if args.prompt is not None:
        return _answer(session, args.prompt, sys.stdout, stats=False)
    if interactive:
        return _interactive(session)
    answered = 0
    for line in sys.stdin:
        if line.strip():
            _answer(session, line.strip(), sys.stdout, stats=False)
            answered += 1
    if answered == 0:
        print("omni chat: error: no input lines: nothing to answer", file=sys.stderr)
        return 1
    return 0


def _answer(session: ChatSession, text: str, out: TextIO, stats: bool) -> int:
    for delta in session.stream_reply(text):
        out.write(delta)
        out.flush()
    out.write("\n")
    out.flush()
    if stats:
        s = session.last
        print(
            f"[{s.prompt_tokens} prompt tokens at {s.prefill_tokens_per_second:.0f} tok/s, "
            f"{s.new_tokens} new at {s.decode_tokens_per_second:.1f} tok/s]",
            file=sys.stderr,
        )
    return 0


def _interactive(session: ChatSession) -> int:
    while True:
        try:
            text = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if text.strip() in ("/quit", "/exit"):
            return 0
        if text.strip() == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        sys.stdout.write("omni> ")
        try:
            _answer(session, text, sys.stdout, stats=True)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)


# ---- Qwen2.5-Omni checkpoints: text, audio, image and video turns --------------------------------------------


def _wants_omni(args: argparse.Namespace) -> bool:
    from model.loaders import CheckpointError
    from model.loaders.omni import is_omni_checkpoint

    media = args.audio or args.image or args.video
    if args.model is not None and is_omni_checkpoint(args.model):
        return True
    if media:
        raise CheckpointError("--audio/--image/--video need a Qwen2.5-Omni checkpoint directory (--model DIR)")
    return False


def _run_omni(args: argparse.Namespace, sampling: SamplingConfig, interactive: bool) -> int:
    from model.encoders.audio_frontend import AudioInputError
    from model.encoders.vision_preprocess import VisionInputError
    from model.loaders import CheckpointError
    from model.loaders.omni import load_thinker
    from model.thinker_session import ThinkerSession
    from model.voices import UnknownVoiceError

    speaker: _Speaker | None = None
    try:
        loaded = load_thinker(args.model, dtype=dtype_of(args), device=args.device)
        if args.speak:
            speaker = _Speaker(args, loaded)
            session: ThinkerSession = speaker.session
        else:
            session = ThinkerSession(loaded.model, loaded.prompt, system_prompt=args.system or _default_system())
        first = _MediaTurn(args, loaded)
        first.check()
    except (CheckpointError, AudioInputError, VisionInputError, ValueError, UnknownVoiceError) as e:
        print(f"omni chat: error: {e}", file=sys.stderr)
        return 1
    if interactive:
        print(f"loaded {loaded.source} in {loaded.load_seconds:.1f} s. /quit or Ctrl-D ends.", file=sys.stderr)
    turns = [args.prompt] if args.prompt is not None else _input_lines(interactive)
    answered = 0
    for text in turns:
        try:
            first.prefill(session)
        except (AudioInputError, VisionInputError) as e:
            print(f"omni chat: error: {e}", file=sys.stderr)
            return 1
        if interactive:
            sys.stdout.write("omni> ")
        if speaker is not None:
            speaker.answer(text, sampling)
        else:
            _omni_answer(session, loaded, text, sampling)
        answered += 1
    if speaker is not None:
        speaker.close()
    if answered == 0:
        print("omni chat: error: no input lines: nothing to answer", file=sys.stderr)
        return 1
    return 0


class _Speaker:
    """--speak: a SpeakingSession whose replies stream text to stdout and audio into one WAV file.

    Each chunk is appended as it comes (the wave module rewrites the header on every write), so the file is
    valid at any moment, even when the chat is interrupted."""

    def __init__(self, args: argparse.Namespace, loaded: LoadedThinker) -> None:
        import wave

        from model.loaders.talker_weights import load_speech
        from model.speech_session import SpeakingSession, SpeechSettings
        from model.token2wav import SAMPLE_RATE

        speech = load_speech(args.model, dtype=dtype_of(args) or loaded.model.lm.dtype, device=args.device)
        speech.voices.get(args.voice)  # an unknown voice fails here, listing the known ones
        settings = SpeechSettings(voice=args.voice, seed=args.seed)
        system = args.system or _default_system()
        self.session = SpeakingSession(loaded.model, loaded.prompt, loaded.tokenizer, speech, settings, system)
        self.wav = wave.open(str(Path(args.speak)), "wb")
        self.wav.setnchannels(1)
        self.wav.setsampwidth(2)
        self.wav.setframerate(SAMPLE_RATE)

    def answer(self, text: str, sampling: SamplingConfig) -> None:
        import torch

        from model.speech_session import TokenText
        from model.token2wav.streaming import PCMChunk

        self.session.add_text(text)
        self.session.end_user_turn()
        for event in self.session.respond(sampling):
            if isinstance(event, TokenText):
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, PCMChunk):
                pcm = (event.samples.cpu().clamp(-1, 1) * 32767).round().to(torch.int16)
                self.wav.writeframes(pcm.numpy().tobytes())
        sys.stdout.write("\n")
        sys.stdout.flush()

    def close(self) -> None:
        self.wav.close()


def _default_system() -> str:
    from model.prompt import SPEECH_SYSTEM_PROMPT

    return SPEECH_SYSTEM_PROMPT


def _input_lines(interactive: bool) -> Iterator[str]:
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and not line:
            return
        if line.strip() in ("/quit", "/exit"):
            return
        if line.strip():
            yield line.strip()


class _MediaTurn:
    """The --audio/--image/--video files, decoded once and prefilled into the first user turn only."""

    def __init__(self, args: argparse.Namespace, loaded: LoadedThinker) -> None:
        self.args, self.loaded, self.done = args, loaded, False

    def check(self) -> None:
        for flag in ("audio", "image", "video"):
            path = getattr(self.args, flag)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"--{flag} {path}: no such file")
        if self.args.audio_in_video and not self.args.video:
            raise ValueError("--audio-in-video needs --video")

    def prefill(self, session: ThinkerSession) -> None:
        session.start_user_turn()
        if self.done:
            return
        self.done = True
        from model.encoders.audio_frontend import load_audio
        from model.encoders.vision_preprocess import load_video, resize_and_normalize, video_frame_size

        th, pre = self.loaded.model, self.loaded.vision_preprocess
        if self.args.image:
            patches, grid = th.image_input(_load_image(self.args.image), pre)
            session.add_image(patches, grid)
        if self.args.video:
            raw = load_video(self.args.video, pre)
            size = video_frame_size(raw.shape[-2], raw.shape[-1], th.cfg.vision, pre)
            frames = resize_and_normalize(raw, size, pre)
            spg = th.cfg.vision.temporal_patch_size / pre.fps
            if self.args.audio_in_video:
                session.begin_av(size[0], size[1], spg)
                session.push_av_audio_features(th.audio_features(load_audio(self.args.video), 16000))
                for f in frames:
                    session.push_av_frame(f)
                session.end_av()
            else:
                session.begin_video(size[0], size[1], spg)
                for f in frames:
                    session.push_video_frame(f)
                session.end_video()
        if self.args.audio:
            session.begin_audio()
            session.push_audio_features(th.audio_features(load_audio(self.args.audio), 16000))
            session.end_audio()


def _load_image(path: str) -> torch.Tensor:
    import av
    import numpy as np
    import torch

    from model.encoders.vision_preprocess import VisionInputError

    try:
        with av.open(path) as container:
            frame = next(container.decode(video=0))
    except (OSError, av.error.FFmpegError, StopIteration) as e:
        raise VisionInputError(f"cannot decode image file {path!r}: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(frame.to_ndarray(format="rgb24")))


def _omni_answer(session: ThinkerSession, loaded: LoadedThinker, text: str, sampling: SamplingConfig) -> None:
    from model.lm.detokenizer import IncrementalDetokenizer

    session.add_text(text)
    session.end_user_turn()
    detok = IncrementalDetokenizer(loaded.tokenizer)
    stops = sampling.stop_token_ids or loaded.tokenizer.stop_token_ids
    for token in session.generate(sampling, frozenset(stops)):
        delta = detok.push(token)
        if delta:
            sys.stdout.write(delta)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
