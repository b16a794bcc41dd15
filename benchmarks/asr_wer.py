"""Word error rate of the recogniser on the tests' spoken questions, general en-us LM vs the conversational LM.

    .venv/bin/python benchmarks/asr_wer.py [-v]

Prints numbers; asserts nothing (tests/model/embedded/test_asr.py holds the bounds). One recogniser per LM is
shared by all the utterances, as in a session; espeak-ng varies slightly from run to run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.spoken import HELD_OUT, IN_DOMAIN, VOICES, spoken
from omni.model.embedded.asr import RecognizerConfig, StreamingRecognizer
from omni.model.embedded.conversation_lm import conversation_lm_path
from omni.model.embedded.wer import corpus_wer


def main() -> int:
    verbose = "-v" in sys.argv[1:]
    configs = [("general", RecognizerConfig()), ("conversation", RecognizerConfig(lm=str(conversation_lm_path())))]
    for name, config in configs:
        r = StreamingRecognizer(config)
        for set_name, questions in (("in-domain", IN_DOMAIN), ("held-out", HELD_OUT)):
            for voice in VOICES:
                pairs = [(q, r.recognize(spoken(q, voice), chunk=320)) for q in questions]
                print(f"{name:13} {set_name:10} {voice.name}@{voice.rate}: WER {corpus_wer(pairs):.3f}")
                if verbose:
                    for ref, hyp in pairs:
                        print(f"    {ref!r} -> {hyp!r}")
        print(f"{name:13} real-time factor {r.stats.real_time_factor:.3f}, second passes {r.stats.redecodes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
