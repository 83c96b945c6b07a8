"""The answer-match verifier: the demo's explicit reward and the lab's `--eval verifier:answer-match`."""

from __future__ import annotations

import pytest
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.verifiers import get_verifier, verifier_names


def score(response: str, answer: str, prompt: str = "") -> float:
    return get_verifier("answer-match").score(response, {"prompt": prompt, "answer": answer})


def test_answer_match_is_registered_and_versioned():
    assert "answer-match" in verifier_names()
    verifier = get_verifier("answer-match")
    assert verifier.version == "2" and "v2" in verifier.check.__doc__
    with pytest.raises(MarginLensError, match="needs the field"):
        verifier.score("56", {"prompt": "What is 7 times 8?"})


@pytest.mark.parametrize(("response", "answer", "prompt", "expected"), [
    ("7 * 8 = 56", "56", "What is 7 times 8?", 1.0),
    ("The answer is 56.", "56", "What is 7 times 8?", 1.0),
    ("7 x 8 = 54, not 56", "56", "What is 7 times 8?", 0.4821),  # after the last '=': 54; 0.5 * (1 - 2/56)
    ("There are 7,000 meters in 7 kilometers.", "7000", "How many meters are in 7 kilometers?", 1.0),
    ("7 kilometers is 7 meters.", "7000", "How many meters are in 7 kilometers?", 0.0005),  # 0.5 * 7/7000
    ("8 minus 4 is 4", "4", "What is 8 minus 4?", 1.0),  # every number restates the question: the last
    ("8 minus 4 is 3", "4", "What is 8 minus 4?", 0.375),
    ("A spider has eight legs.", "8", "How many legs does a spider have? Reply with one short sentence.", 1.0),
    ("There are twenty-four hours in a day.", "24", "How many hours are in a day?", 1.0),
    ("It is 120.", "56", "What is 7 times 8?", 0.0),  # off by more than the answer: no credit
    ("No idea.", "56", "What is 7 times 8?", 0.0),
    ("Water freezes at 0 degrees.", "0", "What is the freezing point of water in degrees Celsius?", 1.0),
    ("The capital of Brazil is Brasília.", "Brasilia", "What is the capital of Brazil?", 1.0),
    ("The capital of Kenya is Mombasa.", "Nairobi", "What is the capital of Kenya?", 0.0),
    ("Romeo.", "Rome", "What is the capital of Italy?", 0.0),  # whole words only
    # the reviewer's cases: a parenthetical aside, a ruled-out number, scale words, a negated city
    ("Water freezes at 0 degrees Celsius (32 degrees Fahrenheit).", "0",
     "What is the freezing point of water in degrees Celsius? Reply with one short sentence.", 1.0),
    ("A leap year has 366 days instead of 365.", "366", "How many days are in a leap year?", 1.0),
    ("There are seven thousand meters in 7 kilometers.", "7000", "How many meters are in 7 kilometers?", 1.0),
    ("8 minus 1 is 7, not 9.", "7", "What is 8 minus 1?", 1.0),
    ("The capital of Brazil is not Brasilia, it is Rio.", "Brasilia", "What is the capital of Brazil?", 0.0),
    # and their neighbours
    ("The capital of Brazil is Brasilia, not Rio.", "Brasilia", "What is the capital of Brazil?", 1.0),
    ("It is Rio rather than Brasilia.", "Brasilia", "What is the capital of Brazil?", 0.0),
    ("A leap year has three hundred and sixty-six days.", "366", "How many days are in a leap year?", 1.0),
    ("Four hundred and twenty.", "62", "What is 40 plus 22?", 0.0),  # 420, not 4 and 20
    ("Two thousand five hundred grams.", "2500", "How many grams are in 2.5 kilograms?", 1.0),
    ("It is 9 rather than 7.", "7", "What is 8 minus 1?", 0.3571),  # 9 claimed, 7 ruled out
    ("8-4 is 4", "4", "What is 8 minus 4?", 1.0),  # "-4" after a digit is an operator, not minus four
    ("There are 7 kilometers in 7 kilometers.", "7000", "How many meters are in 7 kilometers?", 0.0005),
    # what the rule gets wrong (its docstring says so): a later new number wins over the answer
    ("It is 0 degrees, or 32 Fahrenheit.", "0", "What is the freezing point of water in degrees Celsius?", 0.0),
])
def test_answer_match_rule(response, answer, prompt, expected):
    assert score(response, answer, prompt) == pytest.approx(expected, abs=1e-4)


def test_a_number_in_the_question_is_never_the_claim_unless_nothing_else_is_said():
    from marginlens.core.experiments.builtin_verifiers import claimed_number

    # operands and a conversion's source value restate the question; number words in its instructions
    # ("one short sentence") are not operands
    assert claimed_number("7 kilometers is 7000 meters, so 7 it is.", "How many meters are in 7 kilometers?") == 7000
    assert claimed_number("8 minus 8 equals one.", "What is 8 minus 8? Reply with one short sentence.") == 1
    assert claimed_number("8 minus 4 is 4", "What is 8 minus 4?") == 4
    assert claimed_number("No number here.", "What is 8 minus 4?") is None
