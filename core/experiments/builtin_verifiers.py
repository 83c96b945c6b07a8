"""The built-in verifiers: plain specs (the fields of core.experiments.verifiers.Verifier), which the
registry registers the first time it is asked for a verifier."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORD_VALUE = {word: i for i, word in enumerate(_UNITS)} | {word: 20 + 10 * i for i, word in enumerate(_TENS)}
# "twenty-four", "twenty four", "eight": number words below a hundred, written as digits before matching
_NUMBER_WORDS = re.compile(r"\b(" + "|".join(_TENS) + r")(?:[- ](" + "|".join(_UNITS[1:10]) + r"))?\b|\b("
                           + "|".join(_UNITS) + r")\b")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def _normalise(text: str) -> str:
    """Lower case, accents dropped ("Brasília" is "brasilia"), thousands separators removed."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return _THOUSANDS.sub("", text)


def _digits(text: str) -> str:
    def value(match: re.Match[str]) -> str:
        if match.group(3):
            return str(_WORD_VALUE[match.group(3)])
        return str(_WORD_VALUE[match.group(1)] + (_WORD_VALUE[match.group(2)] if match.group(2) else 0))
    return _NUMBER_WORDS.sub(value, text)


def claimed_number(response: str, question: str = "") -> float | None:
    """The number a response gives as its result: the first number after its last '='; else its last number
    that is not one of the numbers written (in digits) in the question, or, when every number restates the
    question, its last number. So "7 x 8 = 56", "The answer is 56" and "There are 7000 meters in 7
    kilometers" claim 56, 56 and 7000. Number words count ("eight legs" claims 8). None when it states no
    number."""
    text = _digits(_normalise(response))
    after = _NUMBER.findall(text.rsplit("=", 1)[1]) if "=" in text else []
    if after:
        return float(after[0])
    numbers = [float(n) for n in _NUMBER.findall(text)]
    given = {float(n) for n in _NUMBER.findall(_normalise(question))}
    new = [n for n in numbers if n not in given]
    return (new or numbers or [None])[-1]


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(_normalise(text).strip()) is not None


def answer_match(response: str, row: Mapping[str, Any]) -> float:
    """answer-match v1.

    Numeric reference answers: the response's claimed number (see `claimed_number`; the row's prompt is the
    question) equal to the answer
    scores 1.0; a wrong number earns partial credit for closeness, 0.5 * max(0, 1 - |claimed - answer| /
    max(|answer|, 1)) (off by 1 on 56 earns 0.49, off by half the answer or more earns at most 0.25, off by
    the answer's size or more earns 0); no number scores 0.0.
    Text reference answers (a city): 1.0 when the answer appears as whole words in the response, compared
    without case or accents, else 0.0 (no partial credit: a wrong city is not "close").
    So a correct response always scores 1.0 and an incorrect one at most 0.5.
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
    words = re.escape(_normalise(answer).strip())
    return 1.0 if re.search(rf"\b{words}\b", _normalise(response)) else 0.0


ANSWER_MATCH: dict[str, Any] = {
    "name": "answer-match", "version": "1",
    "description": "checkable answers: 1.0 for the right number or named answer; a wrong number earns up to 0.5 "
                   "for closeness",
    "check": answer_match,
}
BUILTIN: tuple[dict[str, Any], ...] = (ANSWER_MATCH,)
