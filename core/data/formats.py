"""Turn one source record of any supported layout into a canonical pair, or say exactly what is wrong.

Layouts (docs/FORMATS.md, "Formats read"):
  trl-standard                 prompt, chosen, rejected: strings
  trl-conversational           prompt: messages; chosen/rejected: messages ending in the assistant turn
  trl-conversational-implicit  chosen/rejected: whole conversations; the prompt is their shared prefix
  simpo-armorm                 conversational + all_generated_responses + all_rm_scores (m_ex = max - min)
  ultrafeedback-binarized      conversational + score_chosen, score_rejected
  hh-rlhf                      chosen/rejected: "\\n\\nHuman: ...\\n\\nAssistant: ..." text
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from marginlens.core.data.pairs import Message

FORMATS = (
    "trl-standard",
    "trl-conversational",
    "trl-conversational-implicit",
    "simpo-armorm",
    "ultrafeedback-binarized",
    "hh-rlhf",
)
CANONICAL_FIELDS = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected")
HH_ASSISTANT = "\n\nAssistant:"
EMPTY_RESPONSE = "empty_response"  # the flag of a kept pair whose chosen or rejected response is empty
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


class FieldError(Exception):
    """A problem with one field of one record; the ingester adds the source and row."""

    def __init__(self, field: str, reason: str, message: str):
        super().__init__(message)
        self.field = field
        self.reason = reason
        self.message = message


@dataclass
class ParsedPair:
    prompt: list[Message]
    chosen: str
    rejected: str
    score_chosen: float | None = None
    score_rejected: float | None = None
    flags: list[str] = field(default_factory=list)
    warning: str | None = None


def apply_mapping(record: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """Expose the user's source columns under the canonical names (prompt=question, ...)."""
    if not mapping:
        return record
    out = dict(record)
    for canonical, column in mapping.items():
        if column not in record:
            raise FieldError(column, "missing_column", f"mapped column '{column}' (for {canonical}) is not in the record")
        out[canonical] = record[column]
    return out


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def detect_format(record: dict[str, Any]) -> str:
    """Guess the layout from one record's columns and types."""
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if chosen is None or rejected is None:
        missing = "chosen" if chosen is None else "rejected"
        raise FieldError(missing, "missing_column", f"no '{missing}' column; map your columns with --map")
    if "all_rm_scores" in record and "all_generated_responses" in record:
        return "simpo-armorm"
    if _is_messages(chosen) and _is_messages(rejected):
        if "score_chosen" in record and "score_rejected" in record:
            return "ultrafeedback-binarized"
        return "trl-conversational" if _is_messages(record.get("prompt")) else "trl-conversational-implicit"
    if isinstance(chosen, str) and isinstance(rejected, str):
        if record.get("prompt") is None and HH_ASSISTANT in chosen and HH_ASSISTANT in rejected:
            return "hh-rlhf"
        return "trl-standard"
    raise FieldError("chosen", "bad_type", "chosen/rejected are neither strings nor lists of {role, content} messages")


def _text(record: dict[str, Any], name: str, allow_empty: bool = False) -> str:
    if name not in record or record[name] is None:
        raise FieldError(name, "missing_column", f"'{name}' is missing")
    value = record[name]
    if not isinstance(value, str):
        raise FieldError(name, "bad_type", f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise FieldError(name, "empty_content", "empty text")
    return value


def _messages(value: Any, name: str) -> list[Message]:
    if value is None:
        raise FieldError(name, "missing_column", f"'{name}' is missing")
    if not isinstance(value, list) or not value:
        raise FieldError(name, "bad_type", f"expected a non-empty list of messages, got {type(value).__name__}")
    out: list[Message] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise FieldError(f"{name}[{i}]", "bad_type", f"expected a message object, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise FieldError(f"{name}[{i}].role", "bad_type", "role must be a non-empty string")
        if not isinstance(content, str):
            raise FieldError(f"{name}[{i}].content", "bad_type", f"content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def _score(record: dict[str, Any], name: str) -> float:
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise FieldError(name, "missing_column", f"score '{name}' is missing")
    if isinstance(value, bool):
        raise FieldError(name, "bad_score", f"score is a boolean ({value})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FieldError(name, "bad_score", f"not a number: {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise FieldError(name, "bad_score", f"not finite: {number}")
    return number


def _response(conversation: list[Message], name: str, allow_empty: bool) -> str:
    if conversation[-1]["role"] != "assistant":
        raise FieldError(name, "last_turn_not_assistant",
                         f"the last turn is '{conversation[-1]['role']}', expected 'assistant'")
    content = conversation[-1]["content"]
    if not allow_empty and not content.strip():
        raise FieldError(name, "empty_content", "empty assistant response")
    return content


def _split_conversations(prompt: list[Message], chosen: list[Message], rejected: list[Message],
                         allow_empty: bool) -> tuple[list[Message], str, str]:
    """Prompt = explicit prompt + the turns both conversations share; response = each final assistant turn."""
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        _response(conv, name, allow_empty=True)  # the last turn must be the assistant's, checked first
    if prompt and chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
        chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]  # conversations that repeat the prompt
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if not conv:
            raise FieldError(name, "empty_content", "no response turn after the prompt")
        if len(conv) - shared != 1:
            reason = "no_shared_prefix" if not prompt and shared == 0 else "bad_messages"
            raise FieldError(name, reason, "chosen and rejected must share every turn but the final assistant one "
                             f"(they share {shared + len(prompt)} turns; {name} has {len(conv) + len(prompt)})")
    full_prompt = prompt + chosen[:shared]
    if not full_prompt:
        raise FieldError("prompt", "no_shared_prefix", "the two conversations share no prompt turns")
    return full_prompt, _response(chosen, "chosen", allow_empty), _response(rejected, "rejected", allow_empty)


def _hh_messages(text: str) -> list[Message]:
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise FieldError("chosen", "bad_messages", "text before the first 'Human:' turn")
    messages: list[Message] = []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def hh_prompt_cut(chosen: str, rejected: str) -> int:
    """Where the HH prompt ends: the last "\n\nAssistant:" inside the text both sides share (-1: none).

    Not simply the last marker of each side: a few HH rows carry a longer (hallucinated)
    continuation on one side only.
    """
    common = 0
    limit = min(len(chosen), len(rejected))
    while common < limit and chosen[common] == rejected[common]:
        common += 1
    return chosen.rfind(HH_ASSISTANT, 0, common)


def _parse_hh(record: dict[str, Any], allow_empty: bool) -> ParsedPair:
    chosen, rejected = _text(record, "chosen"), _text(record, "rejected")
    cut = hh_prompt_cut(chosen, rejected)
    if cut < 0:
        raise FieldError("chosen", "no_shared_prefix", "chosen and rejected share no '\\n\\nHuman: ...\\n\\nAssistant:' prompt")
    prompt = _hh_messages(chosen[:cut])
    if not prompt or prompt[-1]["role"] != "user":
        raise FieldError("chosen", "bad_messages", "the prompt must end with a Human turn")
    start = cut + len(HH_ASSISTANT)
    responses = []
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        response = text[start:].strip()
        if not allow_empty and not response:
            raise FieldError(name, "empty_content", "empty assistant response")
        responses.append(response)
    flags = [] if chosen.rfind(HH_ASSISTANT) == rejected.rfind(HH_ASSISTANT) == cut else ["multi_turn_response"]
    return ParsedPair(prompt, responses[0], responses[1], flags=flags)


def parse_record(fmt: str, record: dict[str, Any], allow_empty: bool = False) -> ParsedPair:
    """Parse one (already column-mapped) record in layout `fmt`; raise FieldError on any problem.
    With `allow_empty`, a pair with an empty response is kept and flagged EMPTY_RESPONSE: in HH-RLHF a
    silent answer to a harmful request is a legitimate preference, and a flag lets filters find it."""
    pair = _parse_hh(record, allow_empty) if fmt == "hh-rlhf" else _parse_other(fmt, record, allow_empty)
    if not (pair.chosen.strip() and pair.rejected.strip()):
        pair.flags.append(EMPTY_RESPONSE)
    return pair


def _parse_other(fmt: str, record: dict[str, Any], allow_empty: bool) -> ParsedPair:
    if fmt == "trl-standard":
        prompt_value = record.get("prompt")
        if _is_messages(prompt_value):
            prompt = _messages(prompt_value, "prompt")
        else:
            prompt = [{"role": "user", "content": _text(record, "prompt")}]
        pair = ParsedPair(prompt, _text(record, "chosen", allow_empty), _text(record, "rejected", allow_empty))
    else:
        chosen, rejected = _messages(record.get("chosen"), "chosen"), _messages(record.get("rejected"), "rejected")
        prompt_value = record.get("prompt")
        if fmt == "trl-conversational-implicit" or prompt_value is None:
            prompt = []
        elif isinstance(prompt_value, str):
            # ultrafeedback/armorm keep the prompt as a string *and* inside both conversations.
            prompt = [] if chosen[0]["role"] == "user" and chosen[0]["content"] == prompt_value else [
                {"role": "user", "content": _text(record, "prompt")}]
        else:
            prompt = _messages(prompt_value, "prompt")
        full_prompt, chosen_text, rejected_text = _split_conversations(prompt, chosen, rejected, allow_empty)
        pair = ParsedPair(full_prompt, chosen_text, rejected_text)
    if fmt == "simpo-armorm":
        _armorm_scores(record, pair)
    elif "score_chosen" in record or "score_rejected" in record:
        pair.score_chosen, pair.score_rejected = _score(record, "score_chosen"), _score(record, "score_rejected")
    if not pair.prompt[-1]["content"].strip():
        raise FieldError("prompt", "empty_content", "empty prompt")
    return pair


def _armorm_scores(record: dict[str, Any], pair: ParsedPair) -> None:
    scores_value, candidates = record.get("all_rm_scores"), record.get("all_generated_responses")
    if not isinstance(scores_value, list) or len(scores_value) < 2:
        raise FieldError("all_rm_scores", "bad_score", "expected a list of at least two scores")
    scores = [_score({"all_rm_scores": s}, "all_rm_scores") for s in scores_value]
    pair.score_chosen, pair.score_rejected = max(scores), min(scores)
    if not isinstance(candidates, list) or len(candidates) != len(scores):
        raise FieldError("all_generated_responses", "bad_type",
                         f"expected {len(scores)} candidate responses to match all_rm_scores")
    best, worst = scores.index(max(scores)), scores.index(min(scores))
    problems = []
    if candidates[best] != pair.chosen:
        problems.append(f"chosen is not the argmax candidate (#{best})")
    if candidates[worst] != pair.rejected:
        problems.append(f"rejected is not the argmin candidate (#{worst})")
    if problems:
        pair.flags.append("not_argmax")
        pair.warning = "; ".join(problems)
