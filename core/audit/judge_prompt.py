"""The pairwise judge prompt (versioned) and a parser for the judge's answer.

A verdict is only meaningful together with the exact text that produced it, so the template has a
version string and every stored verdict carries both (core.verdicts). Changing a single character of
SYSTEM or USER_TEMPLATE must come with a new PROMPT_VERSION, otherwise old and new verdicts would be
mixed under one key.

Each pair is shown twice: order "AB" puts the chosen response in position A, order "BA" in position B,
so a judge that always favours one position cannot look like it agrees with the labels.

Parsing accepts a bare letter ("A", "[[B]]", "Response A") or a small JSON object
({"winner": "A", "rationale": "..."}), optionally fenced. Anything else is invalid: the raw text is
kept and the answer is never guessed, because a guessed side would bias the agreement statistics.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from marginlens.core.data.pairs import Message

if TYPE_CHECKING:
    from marginlens.core.chat_client import Completion

PROMPT_VERSION = "pairwise-v1"

SYSTEM = (
    "You are an impartial judge of AI assistant responses. You compare two responses to the same "
    "conversation and decide which one is better: more helpful, correct, honest and harmless. "
    "Ignore the order in which the responses are shown and their length."
)

USER_TEMPLATE = (
    "[Conversation]\n{conversation}\n[End of Conversation]\n\n"
    "[Response A]\n{response_a}\n[End of Response A]\n\n"
    "[Response B]\n{response_b}\n[End of Response B]\n\n"
    "Which response is better, A or B? Answer with a JSON object and nothing else, for example "
    '{{"winner": "A", "rationale": "one short sentence"}}. If you cannot write JSON, answer with the '
    "single letter A or B."
)

ORDERS = ("AB", "BA")  # "AB": chosen shown as A; "BA": chosen shown as B

_WINNER_KEYS = ("winner", "choice", "answer", "verdict", "better", "preferred", "best")
_RATIONALE_KEYS = ("rationale", "reason", "reasoning", "explanation", "justification")
# A whole answer that is just a letter, optionally wrapped: "A", "(B)", "[[A]]", "Response B.", "Answer: A".
_BARE_LETTER = re.compile(
    r"^\W*(?:(?:the\s+)?(?:final\s+)?(?:answer|verdict|winner|choice)\s*(?:is)?\s*[:=]?\s*)?"
    r"(?:response|assistant|answer|option)?\s*\W*([AB])\W*$",
    re.IGNORECASE,
)
_BRACKETED = re.compile(r"\[\[\s*([AB])\s*\]\]")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def template_text() -> str:
    """The full prompt text that PROMPT_VERSION names (stored with every verdict)."""
    return f"[system]\n{SYSTEM}\n[user]\n{USER_TEMPLATE}"


def template_sha256() -> str:
    return hashlib.sha256(template_text().encode("utf-8")).hexdigest()


def chosen_position(order: str) -> str:
    """Which letter the chosen response is shown as in this order."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return order[0]


def render_conversation(prompt: list[Message]) -> str:
    """The prompt messages as plain text; a single user turn is shown without a role label."""
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def build_messages(prompt: list[Message], chosen: str, rejected: str, order: str) -> list[dict[str, str]]:
    """Chat messages asking the judge to compare the pair, with the responses placed per `order`."""
    first, second = (chosen, rejected) if chosen_position(order) == "A" else (rejected, chosen)
    user = USER_TEMPLATE.format(conversation=render_conversation(prompt), response_a=first, response_b=second)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class ParsedAnswer:
    choice: str | None  # "A", "B", or None when invalid
    rationale: str
    reason: str | None  # why the answer is invalid; None when valid

    @property
    def valid(self) -> bool:
        return self.choice is not None


def _letter(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    match = _BARE_LETTER.match(value.strip())
    return match.group(1).upper() if match else None


def _json_objects(text: str) -> list[dict]:
    """Every JSON object embedded in `text` (models often wrap the object in prose)."""
    decoder = json.JSONDecoder()
    found = []
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def _from_json(obj: dict) -> ParsedAnswer | None:
    lowered = {str(k).lower(): v for k, v in obj.items()}
    winner_key = next((k for k in _WINNER_KEYS if k in lowered), None)
    if winner_key is None:
        return None
    rationale = next((str(lowered[k]) for k in _RATIONALE_KEYS if k in lowered), "")
    letter = _letter(lowered[winner_key])
    if letter is None:
        return ParsedAnswer(None, rationale, f"JSON {winner_key!r} is {lowered[winner_key]!r}, not A or B")
    return ParsedAnswer(letter, rationale, None)


def parse_answer(text: str | None) -> ParsedAnswer:
    """Read the judge's choice from its reply; invalid (choice None, with a reason) unless unambiguous."""
    if text is None or not text.strip():
        return ParsedAnswer(None, "", "empty answer")
    stripped = _FENCE.sub("", text.strip()).strip()
    objects = _json_objects(stripped)
    parsed = [p for p in (_from_json(o) for o in objects) if p is not None]
    if parsed:
        letters = {p.choice for p in parsed}
        if len(letters) == 1 and None not in letters:
            return parsed[0]
        if len(parsed) == 1:
            return parsed[0]
        return ParsedAnswer(None, "", "several JSON objects with conflicting answers")
    letter = _letter(stripped)
    if letter:
        return ParsedAnswer(letter, "", None)
    bracketed = {m.upper() for m in _BRACKETED.findall(stripped)}
    if len(bracketed) == 1:
        return ParsedAnswer(bracketed.pop(), "", None)
    return ParsedAnswer(None, "", "no A/B answer found" if len(bracketed) < 2 else "both [[A]] and [[B]] given")


def parse_completion(completion: Completion) -> ParsedAnswer:
    """The judge's answer in one finished request: invalid with its reason when the body was unusable.
    The one rule for the audit's verdicts and the lab's pairwise judge."""
    if completion.malformed:
        return ParsedAnswer(None, "", "malformed response body")
    return parse_answer(completion.text)
