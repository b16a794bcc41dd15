"""`omni chat`: a terminal chat that streams the reply token by token, through the engine interface.

Interactive on a terminal (multi-turn, /reset, /quit, tokens/s after each reply on stderr). With standard
input not a terminal it answers each non-empty input line and prints only the replies, one per line (a reply's
own line breaks become spaces), so other programs can use it: `echo "What is the capital of France?" | omni chat`.

Each line is a typed turn (`EngineSession.push_text`) answered by `respond`, as the server answers a Realtime
`conversation.item.create`. A text model runs in the embedded engine without its voice; a Qwen2.5-Omni
checkpoint directory runs in the omni engine (speaking only with `--speak`). Its `--audio FILE`,
`--image FILE` and `--video FILE` join the first user turn before the text (audio as if spoken, images and
video as attachments), e.g. `omni chat --model Qwen2.5-Omni-7B --audio question.wav --prompt "Answer it."`.

A Qwen3-Omni checkpoint directory (told apart from config.json by omni/model/loaders/family.py) runs in the same omni
engine, with the same flags: `--speak` through its Talker and Code2Wav (`--voice` names one of its speakers),
`--video` through its vision encoder; what the engine does not yet do for that family (a video's soundtrack,
`--audio-in-video`) is refused with the engine's message.
"""

from __future__ import annotations

import argparse
import re
import sys
import wave
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from omni.app.lm_args import add_model_arguments, apply_threads, check_device, dtype_of
from omni.model.lm.sampling import SamplingConfig

if TYPE_CHECKING:
    import numpy as np

    from omni.streaming.engine import Attachment, Engine, EngineSession

FirstTurn = tuple[list["Attachment"], "np.ndarray | None"]  # attachments, audio (float32 at 16 kHz)


EXAMPLES = """\
examples:
  omni chat                                  talk on a terminal (/reset starts over, /quit or Ctrl-D ends)
  omni chat --prompt "What is the capital of France?"
  echo "Name three colours." | omni chat     one reply line per input line, nothing else on stdout
  omni chat --model Qwen2.5-Omni-7B --audio question.wav --prompt "Answer it." --speak reply.wav
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the examples' lines as written
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="system prompt (default: the chat template's own)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    d = SamplingConfig()  # the sampling flags' defaults are SamplingConfig's own, but for the penalty
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy (default %(default)s)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="0 = off (default %(default)s)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="1 = off (default %(default)s)")
    # chat's own default, the one the embedded engine answers with (omni.streaming.engines.embedded.DEFAULT_SAMPLING)
    p.add_argument("--repetition-penalty", type=float, default=1.1, help="(default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="(default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="sampling seed (default: none)")
    p.add_argument("--window", type=int, default=4096,
                   help="attention window of the KV cache, in tokens (default %(default)s)")
    p.add_argument("--audio", default=None, help="audio file for the first turn (Qwen2.5-Omni, Qwen3-Omni)")
    p.add_argument("--image", default=None, help="image file for the first turn (Qwen2.5-Omni, Qwen3-Omni)")
    p.add_argument("--video", default=None,
                   help="video file for the first turn, sampled at 2 fps (Qwen2.5-Omni, Qwen3-Omni)")
    p.add_argument(
        "--audio-in-video",
        action="store_true",
        help="also use the video file's audio track, interleaved with its frames (TMRoPE)",
    )
    p.add_argument(
        "--speak",
        default=None,
        metavar="OUT.wav",
        help="also speak the replies (Qwen2.5-Omni, Qwen3-Omni -Instruct checkpoints): 24 kHz WAV of every reply "
        "in turn",
    )
    p.add_argument("--voice", default=None,
                   help="voice for --speak (default: the checkpoint's, Chelsie; Qwen3-Omni: a speaker name)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from omni.model.errors import CheckpointError

    if args.prompt is not None and not args.prompt.strip():
        print("omni chat: error: --prompt is empty: nothing to answer", file=sys.stderr)
        return 2
    try:
        apply_threads(args)
        check_device(args.device)
    except ValueError as e:
        print(f"omni chat: error: {e}", file=sys.stderr)
        return 2
    interactive = args.prompt is None and sys.stdin.isatty()
    try:
        _check_media_args(args)
        if interactive:
            print("loading model ...", file=sys.stderr, flush=True)
        engine, loaded = _build_engine(args)
        chat = _Chat(engine, args.system, args.speak)
        media = _read_media(args)
    except (CheckpointError, ValueError) as e:  # bad media files raise ValueErrors naming the file
        print(f"omni chat: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # --speak's file cannot be written
        print(f"omni chat: error: --speak {args.speak}: {e.strerror or e}", file=sys.stderr)
        return 1
    if interactive:
        print(f"{loaded}. /reset starts over, /quit or Ctrl-D ends.", file=sys.stderr)
    try:
        answered = chat.run([args.prompt] if args.prompt is not None else _input_lines(interactive), media, interactive)
    except ValueError as e:  # media the engine cannot take (e.g. a soundtrack it does not yet read)
        print(f"omni chat: error: {e}", file=sys.stderr)
        return 1
    finally:
        chat.close()
    if answered == 0:
        print("omni chat: error: no input lines: nothing to answer", file=sys.stderr)
        return 1
    return 0


def _check_media_args(args: argparse.Namespace) -> None:
    for flag in ("audio", "image", "video"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"--{flag} {path}: " + ("a folder, not a file" if Path(path).is_dir() else "no such file"))
    if args.audio_in_video and not args.video:
        raise ValueError("--audio-in-video needs --video")
    if args.speak is not None and (Path(args.speak).is_dir() or not Path(args.speak).parent.is_dir()):
        raise ValueError(f"--speak {args.speak}: cannot write a WAV file there (a folder, or in no folder)")


def _build_engine(args: argparse.Namespace) -> tuple[Engine, str]:
    """The engine for `--model` and what was loaded, for the banner. Imports the model side here only."""
    from omni.model.errors import CheckpointError
    from omni.model.loaders import load_lm
    from omni.model.loaders.omni import is_omni_checkpoint

    sampling = _sampling(args)
    if args.model is not None and is_omni_checkpoint(args.model):
        from omni.streaming.engines.omni import OmniEngine

        omni = OmniEngine(
            args.model, args.device, dtype_of(args), args.voice, speak=args.speak is not None,
            sampling=sampling, seed=args.seed, window=args.window, quant=args.quant,
        )  # fmt: skip
        return omni, f"loaded {omni.thinker.source} in {omni.thinker.load_seconds:.1f} s"
    if args.audio or args.image or args.video or args.speak:
        raise CheckpointError("--audio/--image/--video/--speak need a Qwen2.5-Omni or Qwen3-Omni checkpoint directory "
                              "(--model DIR)")
    from omni.streaming.engines.embedded import EmbeddedEngine

    lm = load_lm(args.model, dtype=dtype_of(args), device=args.device, quant=args.quant)
    text = EmbeddedEngine(lm=lm, speak=False, listen=False, system_prompt=None, sampling=sampling, window=args.window)
    return text, f"loaded {lm.source} in {lm.load_seconds:.1f} s"


def _sampling(args: argparse.Namespace) -> SamplingConfig:
    return SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                          seed=args.seed)


def _read_media(args: argparse.Namespace) -> FirstTurn:
    """The first turn's attachments and its audio, decoded once."""
    from omni.streaming.media_files import read_audio, read_image, read_video

    attachments: list[Attachment] = []
    if args.image:
        attachments.append(read_image(args.image))
    if args.video:
        attachments.append(read_video(args.video, with_audio=args.audio_in_video))
    return attachments, read_audio(args.audio) if args.audio else None


class _Chat:
    """One conversation with an engine session: typed turns in, reply text to stdout, speech to a WAV file.

    The WAV file gets each chunk as it comes (the wave module rewrites the header on every write), so it is
    valid at any moment, even when the chat is interrupted."""

    def __init__(self, engine: Engine, system: str | None, speak: str | None) -> None:
        self.engine = engine
        self.system = system
        self.session: EngineSession = engine.open_session(instructions=system)
        self.wav: wave.Wave_write | None = None
        self._wav_file: BinaryIO | None = None
        if speak is not None:
            # opened here, not by wave.open(path): on an unwritable path that leaves a half-made Wave_write whose
            # __del__ prints a second traceback; wave leaves a file it did not open to us to close
            self._wav_file = open(speak, "wb")
            self.wav = wave.open(self._wav_file, "wb")
            self.wav.setnchannels(1)
            self.wav.setsampwidth(2)
            self.wav.setframerate(engine.output_sample_rate)

    def run(self, turns: Iterable[str], media: FirstTurn, interactive: bool) -> int:
        """Answer every turn; the media join the first. Returns how many turns were answered."""
        attachments, audio = media
        answered = 0
        for text in turns:
            if interactive and text == "/reset":
                self.session.close()
                self.session = self.engine.open_session(instructions=self.system)
                print("(conversation cleared)", file=sys.stderr)
                continue
            if answered == 0:
                for a in attachments:
                    self.session.push_media(a)
                if audio is not None:
                    self.session.push_audio(audio, 0.0)
            self.session.push_text(text)
            if interactive:
                sys.stdout.write("omni> ")
            self.answer(sys.stdout, stats=interactive, one_line=not interactive)
            answered += 1
        return answered

    def answer(self, out: TextIO, stats: bool, one_line: bool = False) -> None:
        """Stream one reply to `out`. `one_line`: its line breaks become spaces, so a script reading the replies
        of piped questions gets exactly one line per question."""
        from omni.streaming.engine import AudioChunk, ReplyDone, TextDelta, close_iterator

        said = ""
        flat = _OneLine() if one_line else None
        done: ReplyDone | None = None
        events = self.session.respond()
        try:
            for ev in events:
                if isinstance(ev, TextDelta):
                    said += ev.text
                    out.write(flat(ev.text) if flat is not None else ev.text)
                    out.flush()
                elif isinstance(ev, AudioChunk) and self.wav is not None:
                    self.wav.writeframes(_int16(ev.pcm))
                elif isinstance(ev, ReplyDone):
                    done = ev
        except KeyboardInterrupt:
            close_iterator(events)
            self.session.interrupt(said)  # the history keeps what was shown
            print("\n(interrupted)", file=sys.stderr)
            return
        out.write("\n")
        out.flush()
        if stats and done is not None:
            _print_stats(done.stats)

    def close(self) -> None:
        self.session.close()
        if self.wav is not None:
            self.wav.close()
        if self._wav_file is not None:
            self._wav_file.close()


class _OneLine:
    """A streamed reply's line breaks as single spaces: each run of breaks (with the blanks beside them in the
    same piece) becomes one space, none before the first word or after the last."""

    def __init__(self) -> None:
        self.started = False
        self.gap = False  # a line break since the last text
        self.blanks = ""  # blanks after the last text, held back until text follows (a break drops them)

    def __call__(self, delta: str) -> str:
        out: list[str] = []
        for part in re.split(r"(\s*\n\s*)", delta):
            if "\n" in part:
                self.gap, self.blanks = True, ""
            elif part:
                if not self.started:
                    part = part.lstrip()
                text = (" " if self.gap else self.blanks) + part if self.started else part
                body = text.rstrip()
                self.blanks = text[len(body) :]
                if body.strip():
                    out.append(body)
                    self.started, self.gap = True, False
        return "".join(out)


def _int16(pcm: np.ndarray) -> bytes:
    import numpy as np

    return (np.clip(pcm, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()


def _print_stats(stats: dict[str, float]) -> None:
    """Prefill and decode speed, where the engine measured them (the text engine does)."""
    if "prefill_s" not in stats or "decode_tok_s" not in stats:
        return
    prompt = int(stats["prompt_tokens"])
    prefill = prompt / stats["prefill_s"] if stats["prefill_s"] > 0 else 0.0
    print(
        f"[{prompt} prompt tokens at {prefill:.0f} tok/s, "
        f"{int(stats['new_tokens'])} new at {stats['decode_tok_s']:.1f} tok/s]",
        file=sys.stderr,
    )


def _input_lines(interactive: bool) -> Iterator[str]:
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return
        if not interactive and not line:
            return
        if line.strip() in ("/quit", "/exit"):
            return
        if line.strip():
            yield line.strip()
