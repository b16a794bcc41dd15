"""benchmarks/fact_recall.py's scoring (`verdict`, `--rescore`): a reply is right when it holds the expected value,
no other told fact's value, and gives the value to no attribute the fact does not name."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fact_recall import rescore, verdict

EMPLOYEE = ("My employee ID is 609153.", "What is my employee ID?", "609153")
ANNIVERSARY = ("My anniversary is on October 9.", "When is my anniversary?", "october 9")
STORAGE = ("My storage unit number is 7294.", "What is my storage unit number?", "7294")
FRUIT = ("My favourite fruit is mango.", "What is my favourite fruit?", "mango")
BADGE = ("My badge number is 3309.", "What is my badge number?", "3309")
MEMBERSHIP = ("My membership number is 552817.", "What is my membership number?", "552817")


@pytest.mark.parametrize(("reply", "fact", "want"), [
    ("Your employee ID is 609153.", EMPLOYEE, ""),
    ("six zero nine one five three", EMPLOYEE, ""),
    ("My customer ID is 609153", EMPLOYEE, "attribute"),  # the value, given to something the user never named
    ("My birthday is on October 9, 2026.", ANNIVERSARY, "attribute"),
    ("Your anniversary is on October 9th.", ANNIVERSARY, ""),
    ("The user asked for the storage unit number, which is 7294.", STORAGE, ""),
    ("My favorite fruit is mango.", FRUIT, ""),  # US spelling: the same spoken word
    ("I don't know your employee ID.", EMPLOYEE, "missing"),
])
def test_verdict_alone(reply: str, fact: tuple[str, str, str], want: str) -> None:
    assert verdict(reply, fact, [fact]) == want


def test_another_told_value_makes_the_reply_wrong() -> None:
    told = [BADGE, MEMBERSHIP]
    assert verdict("Your badge number is 3309.", BADGE, told) == ""
    assert verdict("It is 3309 or 552817.", BADGE, told) == "other fact"
    assert verdict("It is 3309 or 552817.", BADGE, [BADGE]) == ""  # alone: the other value was never told


def test_rescore_counts_a_show_log_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "show.log"
    log.write_text(
        "  [alone engine] ok  'What is my employee ID?' -> 'My customer ID is 609153'\n"
        "      slot: ignored\n"
        "  [alone engine] ok  'What is my badge number?' -> \"Your badge number's 3309.\"\n")
    assert rescore(log, [EMPLOYEE, BADGE]) == 0
    out = capsys.readouterr().out
    assert "attribute: 'What is my employee ID?'" in out
    assert out.splitlines()[-1].split() == ["alone", "engine", "2", "2", "1"]
