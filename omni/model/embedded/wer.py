"""Word error rate: word-level Levenshtein distance over normalised text.

Normalisation makes a reference written by a person (or an LLM) comparable with a recogniser's output:
lower case, punctuation dropped, digits spelled as words the way a recogniser writes them ("42" ->
"forty two", "1999" -> "nineteen ninety nine", "3rd" -> "third"), hyphens split ("twenty-one" -> "twenty
one"), recogniser markup removed (pocketsphinx writes alternate pronunciations as "the(2)" and fillers
as "<sil>", "[noise]"), and British spellings written the American way ("colour" -> "color", "tyre" ->
"tire"), as standard WER scorers do (Whisper's English normaliser among them): a recogniser that writes one
spelling of a word has heard it as well as one that writes the other. The list below is common British
spellings with a different American one, by pattern (-our, -re, -ise, -ll-, ...), not words of any test set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_IRREGULAR = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
    "twelve": "twelfth",
}  # fmt: skip
_SYMBOLS = {"%": " percent ", "&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "$": " dollars "}

# British -> American spelling, common words whose spellings differ (never a word that is also an unrelated
# American word: "four", "tour" and "our" end in -our in both).
_AMERICAN = {
    **{f"{stem}our{end}": f"{stem}or{end}" for stem in (
        "col", "fav", "flav", "hon", "hum", "lab", "neighb", "rum", "vap", "harb", "behavi", "od", "arm", "endeav",
        "sav", "vig", "glam", "parl", "tum", "val", "splend", "clam", "rig", "ard", "ferv")
       for end in ("", "s", "ed", "ing", "ite", "ites", "ful", "able", "hood", "er", "ers", "y")},
    **{f"{stem}re{end}": f"{stem}er{end}" for stem in (
        "cent", "met", "kilomet", "centimet", "millimet", "lit", "theat", "fib", "somb", "spect", "lust", "calib",
        "sab", "meag", "goit", "mit")
       for end in ("", "s", "d")},
    **{f"{stem}is{end}": f"{stem}iz{end}" for stem in (
        "organ", "real", "recogn", "apolog", "special", "emphas", "summar", "minim", "maxim", "optim", "critic",
        "memor", "priorit", "categor", "visual", "standard", "modern", "civil", "author", "personal", "final",
        "symbol", "agon", "fertil", "util", "item", "sympath", "global", "normal", "familiar")
       for end in ("e", "es", "ed", "ing", "ation", "ations", "er", "ers")},
    **{f"{stem}l{end}": f"{stem}{end}" for stem in (
        "travel", "cancel", "model", "label", "fuel", "signal", "level", "dial", "marvel", "counsel", "quarrel",
        "jewel", "tunnel", "channel", "total", "equal")
       for end in ("ed", "ing", "er", "ers")},
    "analyse": "analyze", "analysed": "analyzed", "analysing": "analyzing", "paralyse": "paralyze",
    "catalogue": "catalog", "dialogue": "dialog", "programme": "program", "programmes": "programs",
    "grey": "gray", "greys": "grays", "cheque": "check", "cheques": "checks", "tyre": "tire", "tyres": "tires",
    "aluminium": "aluminum", "jewellery": "jewelry", "mould": "mold", "plough": "plow", "pyjamas": "pajamas",
    "defence": "defense", "offence": "offense", "licence": "license", "practise": "practice",
    "aeroplane": "airplane", "aeroplanes": "airplanes", "manoeuvre": "maneuver", "oestrogen": "estrogen",
    "paediatric": "pediatric", "encyclopaedia": "encyclopedia", "anaemia": "anemia", "haemoglobin": "hemoglobin",
    "sceptical": "skeptical", "storey": "story", "kerb": "curb", "draught": "draft", "enrol": "enroll",
    "fulfil": "fulfill", "skilful": "skillful", "instalment": "installment", "judgement": "judgment",
    "ageing": "aging", "doughnut": "donut", "yoghurt": "yogurt", "whisky": "whiskey",
}  # fmt: skip

_MARKUP = re.compile(r"<[^>]*>|\[[^\]]*\]|\(\d+\)")
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:st|nd|rd|th)?")
_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def _under_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n or not words:
        words.append(_ONES[n])
    return words


def number_words(n: int) -> list[str]:
    """Cardinal words of a non-negative integer, without "and": 1205 -> one thousand two hundred five."""
    if n < 1000:
        return _under_thousand(n)
    words: list[str] = []
    for scale, name in _SCALES:
        if n >= scale:
            words += number_words(n // scale) + [name]
            n %= scale
    if n:
        words += _under_thousand(n)
    return words


def _spell_number(token: str) -> str:
    ordinal = token[-2:] in ("st", "nd", "rd", "th")
    digits = token[:-2] if ordinal else token
    whole, _, frac = digits.replace(",", "").partition(".")
    n = int(whole)
    if 1100 <= n <= 1999 and len(whole) == 4 and "," not in digits and not frac and not ordinal:
        # Years: espeak-ng and people say 1999 as "nineteen ninety nine", 1900 as "nineteen hundred".
        hi, lo = divmod(n, 100)
        words = _under_thousand(hi) + (["hundred"] if lo == 0 else (["oh"] if lo < 10 else []) + _under_thousand(lo))
    else:
        words = number_words(n)
    if frac:
        words += ["point"] + [_ONES[int(d)] for d in frac]
    if ordinal:
        last = words[-1]
        if last in _ORDINAL_IRREGULAR:
            words[-1] = _ORDINAL_IRREGULAR[last]
        elif last.endswith("y"):
            words[-1] = last[:-1] + "ieth"
        else:
            words[-1] = last + "th"
    return " " + " ".join(words) + " "


def normalize_words(text: str) -> list[str]:
    """Words of `text` in the form both references and recogniser outputs are compared in."""
    text = _MARKUP.sub(" ", text.lower())
    for symbol, spoken in _SYMBOLS.items():
        text = text.replace(symbol, spoken)
    text = _NUMBER.sub(lambda m: _spell_number(m.group(0)), text)
    text = text.replace("\u2019", "'").replace("-", " ")
    words = _NOT_WORD.sub(" ", text).split()
    # Quotes are punctuation; apostrophes inside a word ("don't", "france's") are part of it.
    words = [w.strip("'") for w in words if w.strip("'")]
    return [_AMERICAN.get(w, w) for w in words]


@dataclass(frozen=True)
class WordErrors:
    """Edit counts of one alignment; `rate` is (substitutions + deletions + insertions) / reference words."""

    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Word error rate; an empty reference counts every hypothesis word as an error (rate = insertions)."""
        return self.errors / max(1, self.reference_words)

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_words + other.reference_words,
        )


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Minimum-edit alignment of the normalised words of `hypothesis` against those of `reference`."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    # Each cell holds (edits, substitutions, deletions, insertions); ties prefer substitutions, like sclite.
    prev = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i, r in enumerate(ref, start=1):
        cur = [(i, 0, i, 0)]
        for j, h in enumerate(hyp, start=1):
            d = prev[j - 1]
            best = d if r == h else (d[0] + 1, d[1] + 1, d[2], d[3])
            up, left = prev[j], cur[j - 1]
            if up[0] + 1 < best[0]:
                best = (up[0] + 1, up[1], up[2] + 1, up[3])
            if left[0] + 1 < best[0]:
                best = (left[0] + 1, left[1], left[2], left[3] + 1)
            cur.append(best)
        prev = cur
    _, subs, dels, ins = prev[-1]
    return WordErrors(subs, dels, ins, len(ref))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one hypothesis against one reference (see `WordErrors.rate`)."""
    return word_errors(reference, hypothesis).rate


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    """Word error rate over many (reference, hypothesis) pairs: total errors / total reference words."""
    total = WordErrors(0, 0, 0, 0)
    for reference, hypothesis in pairs:
        total = total + word_errors(reference, hypothesis)
    return total.rate
