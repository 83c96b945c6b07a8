"""The built-in verifiers: plain specs (the fields of core.experiments.verifiers.Verifier), which the
registry registers the first time it is asked for a verifier."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from marginlens.core.errors import MarginLensError

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_WORD_VALUE = {word: i for i, word in enumerate(_UNITS)} | {word: 20 + 10 * i for i, word in enumerate(_TENS)}
_WORD = "|".join(_UNITS + _TENS + list(_SCALES))
# a run of number words: "seven thousand", "three hundred and sixty-six", "twenty four", "seven and eight"
_NUMBER_WORDS = re.compile(rf"\b(?:{_WORD})(?:(?:[- ]|\s+and\s+)(?:{_WORD}))*\b")
# a leading minus only where it cannot be an operator: "8-4" is 8 and 4, "-4" is minus four
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?|\d+(?:\.\d+)?")
_DIGITS = re.compile(r"\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
# a number the response rules out ("7, not 9", "366 instead of 365") is not what it claims
_NEGATED_NUMBER = re.compile(r"\b(?:not|instead of|rather than)\s+-?\d+(?:\.\d+)?")
_PARENTHESES = re.compile(r"\([^()]*\)")


def _normalise(text: str) -> str:
    """Lower case, accents dropped ("Brasília" is "brasilia"), thousands separators removed."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return _THOUSANDS.sub("", text)


def _word_numbers(run: str) -> str:
    """A run of number words as digits: "three hundred and sixty-six" is "366"; a small number right after
    another ("one two", "seven and eight") starts a new number."""
    numbers: list[int] = []
    total = current = 0
    last: str | None = None
    for word in re.findall(r"[a-z]+", run):
        if word == "and":
            continue
        if word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALES:
            total, current = total + max(current, 1) * _SCALES[word], 0
        else:
            value = _WORD_VALUE[word]
            joins = last is None or last in _SCALES or (last in _TENS and value < 10)
            if not joins:
                numbers.append(total + current)
                total = current = 0
            current += value
        last = word
    numbers.append(total + current)
    return " ".join(str(n) for n in numbers)


def _digits(text: str) -> str:
    return _NUMBER_WORDS.sub(lambda match: _word_numbers(match.group(0)), text)


def _numbers(text: str) -> list[float]:
    return [float(n) for n in _NUMBER.findall(_NEGATED_NUMBER.sub(" ", text))]


def claimed_number(response: str, question: str = "") -> float | None:
    """The number a response gives as its result, or None when it states no number.

    Number words count ("eight legs" is 8, "seven thousand" 7000), and a number the response rules out
    ("not 9", "instead of 365", "rather than 9") never counts. Then: the first number after the response's
    last '='; else its last number that does not restate a number of the question (written in digits
    there: an operand, a conversion's source value), looked for outside parentheses first ("0 degrees
    Celsius (32 degrees Fahrenheit)" claims 0); else, when every number restates the question, its last
    number. So "7 x 8 = 56", "The answer is 56" and "There are 7000 meters in 7 kilometers" claim 56, 56
    and 7000.

    What it gets wrong: a response that names its answer before a further new number claims the later one
    ("It is 0 degrees, or 32 Fahrenheit" claims 32; "366 days, one more than 365" claims 365), and a
    negation other than the three forms above is not seen ("9 is wrong, it is 7" claims 7, but "it is 7;
    9 is wrong" claims 9).
    """
    text = _digits(_normalise(response))
    after = _numbers(text.rsplit("=", 1)[1]) if "=" in text else []
    if after:
        return after[0]
    given = {float(n) for n in _DIGITS.findall(_normalise(question))}
    for part in (_PARENTHESES.sub(" ", text), text):
        new = [n for n in _numbers(part) if n not in given]
        if new:
            return new[-1]
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(_normalise(text).strip()) is not None


# "not Rio", "isn't Rio", "rather than Rio", "instead of Rio": a named answer ruled out
_NEGATION = r"(?:not|isn't|is not|rather than|instead of)\s+(?:the\s+(?:city\s+(?:of\s+)?)?)?"


def names_answer(response: str, answer: str) -> bool:
    """Whether the response names `answer` as whole words (without case or accents) other than in a simple
    negation ("not Brasilia", "rather than Brasilia" do not count)."""
    text, words = _normalise(response), re.escape(_normalise(answer).strip())
    return any(not re.search(rf"\b{_NEGATION}$", text[:match.start()])
               for match in re.finditer(rf"\b{words}\b", text))


def answer_match(response: str, row: Mapping[str, Any]) -> float:
    """answer-match v2.

    Numeric reference answers: the response's claimed number (see `claimed_number`; the row's prompt is the
    question) equal to the answer scores 1.0; a wrong number earns partial credit for closeness,
    0.5 * max(0, 1 - |claimed - answer| / max(|answer|, 1)) (off by 1 on 56 earns 0.49, off by half the
    answer or more earns at most 0.25, off by the answer's size or more earns 0); no number scores 0.0.
    Text reference answers (a city): 1.0 when the response names the answer as whole words, compared
    without case or accents, other than as "not CITY" (or "isn't", "rather than", "instead of" CITY), else
    0.0 (no partial credit: a wrong city is not "close").
    So an incorrect response scores at most 0.5, and a response that states the right answer the way the
    rules read it scores 1.0; one that hides it (see `claimed_number` for what the rule gets wrong), or
    names the city and a rival without negating the rival ("Brasilia, or maybe Rio"), is scored by what
    the rule reads.
    """
    answer = str(row["answer"])
    if _is_number(answer):
        claimed = claimed_number(response, str(row.get("prompt") or ""))
        if claimed is None:
            return 0.0
        target = float(_normalise(answer))
        if claimed == target:
            return 1.0
        return round(0.5 * max(0.0, 1.0 - abs(claimed - target) / max(abs(target), 1.0)), 4)
    return 1.0 if names_answer(response, answer) else 0.0


ANSWER_MATCH: dict[str, Any] = {
    "name": "answer-match", "version": "2",
    "description": "checkable answers: 1.0 for the right number or named answer; a wrong number earns up to 0.5 "
                   "for closeness",
    "check": answer_match,
}


def self_consistency(response: str, row: Mapping[str, Any]) -> float:
    """self-consistency v1: reference-free, for self-play on questions with a numeric answer (a rewritten
    question has no reference answer to match).

    The share of `row["samples"]` (the n sibling answers to the same prompt, the response itself among them)
    that claim the same number as the response (`claimed_number`, the extraction answer-match uses; the row's
    prompt is the question). 0.0 when the response claims no number. Graded rather than 0/1 so that the reward
    gap between the best and the worst answer varies across prompts: 4 answers claiming 14, 14, 14, 9 give
    0.75, 0.75, 0.75, 0.25 (gap 0.5); 14, 14, 9, 7 give 0.5, 0.5, 0.25, 0.25 (gap 0.25). It rewards agreeing
    with the policy's own answers, which is right only as often as they are.
    """
    samples = row["samples"]
    if not isinstance(samples, (list, tuple)) or not all(isinstance(s, str) for s in samples):
        raise MarginLensError(f"verifier 'self-consistency': row id {row.get('id')!r}, field 'samples': "
                              "expected a list of answer strings")
    question = str(row.get("prompt") or "")
    mine = claimed_number(response, question)
    if mine is None or not samples:
        return 0.0
    return sum(claimed_number(s, question) == mine for s in samples) / len(samples)


SELF_CONSISTENCY: dict[str, Any] = {
    "name": "self-consistency", "version": "1",
    "description": "reference-free (self-play): the share of the sibling answers that claim the same number; "
                   "needs the row's 'samples'",
    "check": self_consistency,
    "needs": ("samples",),
}
BUILTIN: tuple[dict[str, Any], ...] = (ANSWER_MATCH, SELF_CONSISTENCY)
