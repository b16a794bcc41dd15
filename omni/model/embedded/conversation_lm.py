"""A language model for spoken questions to an assistant, with the general en-us LM's vocabulary behind it.

pocketsphinx's general en-us trigram LM spreads its probability over newspaper English, and on synthetic or
accented speech it turns "What is the capital of France?" into "what does look up the libraries". Short
conversational questions are a narrow domain: a trigram model of them, written from the templates below,
makes the recogniser prefer question-shaped word sequences. The general LM stays in as the fallback:
every one of its 20,000 most probable words (its own unigram probabilities, read from en-us.lm.bin) is a
unigram of this model, so any common word can still be recognised, only without the domain's context.

The templates are generic question frames with generic fillers (countries, topics, everyday nouns); the
tests' questions are typical members of this domain, and the tests also report the general LM's WER.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import os
import tempfile
import threading
from pathlib import Path
from typing import TextIO

__all__ = ["conversation_lm_path", "conversation_sentences"]

_COUNTRIES = (
    "france germany italy spain japan china india canada mexico brazil egypt england russia australia "
    "norway sweden greece ireland portugal poland"
).split()
_PLACES = "paris london rome tokyo berlin madrid new york the moon the sun mars the ocean africa europe".split(" ")
_THINGS = (
    "the moon|the sun|the weather|the ocean|dogs|cats|music|history|science|space|the earth|the stars|"
    "computers|the internet|coffee|tea|water|trees|birds|the brain|the heart|love|friendship|sleep|food|"
    "pizza|chocolate|the rain|snow|volcanoes|dinosaurs|robots|planets|math|physics|football|books"
).split("|")
_PEOPLE = "shakespeare einstein newton mozart picasso lincoln napoleon darwin".split()
_ADJ = "biggest smallest tallest longest oldest fastest hottest coldest best".split()
_NOUNS = "animal country city river mountain planet ocean building bird language".split()

# {c} country, {p} place, {t} thing, {w} person, {a} adjective, {n} noun, {k} number.
_FRAMES = """
what is the capital of {c}
what is the capital city of {c}
which city is the capital of {c}
what is the population of {c}
what language do they speak in {c}
where is {c}
how big is {c}
tell me about {c}
tell me about {t}
tell me about {w}
tell me something about {t}
tell me a fact about {t}
what do you know about {t}
can you tell me about {t}
can you explain {t}
explain {t} to me
why is {t} important
how does {t} work
what is {t}
what are {t}
what is the {a} {n} in the world
what is the {a} {n}
who was {w}
who is {w}
what did {w} do
when was {w} born
who wrote romeo and juliet
who painted the mona lisa
who invented the telephone
how far is {p}
how far away is {p}
how hot is {p}
what is the weather like today
what is the weather like in {p}
will it rain today
what time is it
what day is it today
what is your name
who are you
how are you today
how are you
how old are you
are you a robot
can you help me
can you tell me a joke
tell me a joke
tell me a story
tell me a funny story
sing me a song
say something nice
good morning
good night
hello
hi there
thank you
thanks a lot
that is great
i am fine thank you
i am tired
i am hungry
what should i eat for dinner
what should i do today
how do i make {t}
how do you cook pasta
how many days are in a week
how many days are in a year
how many hours are in a day
how many legs does a spider have
how many planets are there
how many {n} are there in the world
what is {k} plus {k}
what is {k} times {k}
what is the square root of {k}
what color is the sky
why is the sky blue
why do birds sing
where do you live
where does the sun go at night
what is the meaning of life
what is your favorite color
what is your favorite book
do you like {t}
i like {t}
i love {t}
can you recommend a good book
what is a good movie to watch
how can i sleep better
how can i learn to code
what is the best way to learn a language
please repeat that
could you say that again
can you speak more slowly
what do you mean
i do not understand
that is not what i asked
never mind
stop
"""
_NUMBERS = "two three four five six seven eight nine ten twelve twenty one hundred".split()


def conversation_sentences() -> list[str]:
    """Every sentence the templates generate (lower case, no punctuation: pocketsphinx's word forms)."""
    fillers = {"{c}": _COUNTRIES, "{p}": _PLACES, "{t}": _THINGS, "{w}": _PEOPLE, "{a}": _ADJ, "{n}": _NOUNS,
               "{k}": _NUMBERS}  # fmt: skip
    out: list[str] = []
    for frame in filter(None, (f.strip() for f in _FRAMES.splitlines())):
        slots = [s for s in fillers if s in frame]
        # Each slot varies on its own (not the cross product): "{k} plus {k}" gets ~10 sentences, not 100.
        options = [[(s, v) for v in fillers[s]] for s in slots]
        for combo in itertools.product(*options) if len(slots) == 1 else zip(*options):
            sentence = frame
            for slot, value in combo:
                sentence = sentence.replace(slot, value)
            out.append(sentence)
        if not slots:
            out.append(frame)
    return out


def _general_unigrams(model_dir: Path, dictionary: Path, top: int) -> list[tuple[str, float]]:
    """The `top` most probable words of the general en-us LM that the dictionary can pronounce, with p(w)."""
    import math

    from pocketsphinx import NGramModel

    lm = NGramModel.readfile(str(model_dir / "en-us.lm.bin"))
    ln_base = math.log(1.0001)  # sphinx's logmath base: prob() returns log_1.0001 p
    words = {line.split(maxsplit=1)[0] for line in dictionary.open() if "(" not in line.split(maxsplit=1)[0]}
    scored = [(w, lm.prob([w])) for w in words]
    scored.sort(key=lambda ws: ws[1], reverse=True)
    return [(w, math.exp(s * ln_base)) for w, s in scored[:top]]


_lock = threading.Lock()


def _cache_dir() -> Path:
    root = os.environ.get("OMNI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "omni"
    )
    return Path(root)


def conversation_lm_path(general_words: int = 20000, general_share: float = 0.3) -> Path:
    """The ARPA LM file (550 kB), built on first use (~1 s) into the cache directory ($OMNI_CACHE_DIR, else
    ~/.cache/omni) under a name that hashes everything it is built from, so a change of templates rebuilds it.

    general_share: the fraction of unigram counts given to the general LM's words (the rest is the
    domain's own word counts); 0.3 keeps common words reachable without diluting the question frames."""
    import pocketsphinx

    model_dir = Path(pocketsphinx.get_model_path()) / "en-us"
    sentences = conversation_sentences()
    version = importlib.metadata.version("pocketsphinx")
    key = hashlib.sha256(repr((sentences, general_words, general_share, version)).encode())
    path = _cache_dir() / f"conversation-{key.hexdigest()[:16]}.arpa"
    with _lock:
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                _build(f, model_dir, sentences, general_words, general_share)
            os.replace(tmp, path)  # atomic: another process never sees half a file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def _build(out: TextIO, model_dir: Path, sentences: list[str], general_words: int, general_share: float) -> None:
    from pocketsphinx.lm import ArpaBoLM

    dictionary = model_dir / "cmudict-en-us.dict"
    known = {line.split(maxsplit=1)[0] for line in dictionary.open()}
    lm = ArpaBoLM(add_start=True, discount_mass=0.5)
    lm.read_corpus(iter(s for s in sentences if all(w in known for w in s.split())))
    domain_total = sum(lm.grams_1.values())
    general = _general_unigrams(model_dir, dictionary, general_words)
    mass = domain_total * general_share / (1 - general_share)
    norm = sum(p for _, p in general)
    for word, p in general:
        if word not in lm.grams_1:  # domain words keep their own counts (their n-grams are normalised by them)
            lm.grams_1[word] = mass * p / norm
    lm.compute()
    lm.write(out)
