"""Rewrite strategies for self-play's evolve step: how a selected prompt is turned into a new one.

Each strategy is an instruction template around the prompt; the evolver model (local or over an OpenAI-compatible
API) answers it with the new prompt. A strategy's `version` is part of every evolution job's params and of the
`strategy` field of the rows it makes ("NAME@VERSION"): change a template's wording, bump its version, so rewrites
made under the old wording are never mistaken for the new ones.

`clean_rewrite` undoes the wrapping small models put around an answer (quotes, a "New prompt:" label, a code
fence). It removes only such wrapping: what remains is judged by the pool's filters, not repaired here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from marginlens.core.errors import MarginLensError

PLACEHOLDER = "{prompt}"

_REPLY_RULE = ("Reply with the new prompt alone, exactly as a user would send it: do not answer it, and add no title, "
               "comment or explanation.")


@dataclass(frozen=True)
class Strategy:
    name: str
    version: int
    description: str
    template: str  # holds PLACEHOLDER once, where the prompt goes

    def __post_init__(self) -> None:
        if self.template.count(PLACEHOLDER) != 1:
            raise MarginLensError(f"strategy {self.name!r}: the template must hold {PLACEHOLDER} exactly once")

    def instruction(self, prompt: str) -> str:
        # str.replace, not str.format: a prompt full of braces (code, JSON) must pass through untouched.
        return self.template.replace(PLACEHOLDER, prompt)


def _template(task: str) -> str:
    # No delimiters of our own around the prompt: a model echoing them would leave wrapping clean_rewrite keeps.
    return f"{task}\n\nOriginal prompt:\n{PLACEHOLDER}\n\n{_REPLY_RULE}"


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("breadth", 1, "a new prompt on another question from the same domain",
             _template("Invent a new prompt from the same field as the original prompt below, asking about a "
                       "different topic of that field. Keep it about as hard and about as long as the original.")),
    Strategy("deepen", 1, "the same question, asking for deeper knowledge or understanding",
             _template("Make the original prompt below harder by asking for a deeper level of understanding of its "
                       "subject: a more advanced version of the same question. It must stay self-contained and "
                       "answerable.")),
    Strategy("constrain", 1, "the same task with one added requirement on the answer",
             _template("Rewrite the original prompt below so that it keeps its task but adds exactly one extra "
                       "requirement the answer has to meet, for example a limit, a required format or a case it "
                       "must handle.")),
    Strategy("concretize", 1, "a general question made specific: named cases, numbers, situations",
             _template("Rewrite the original prompt below so that it asks about one specific, concrete case instead "
                       "of the general idea: replace general notions by particular names, quantities or "
                       "situations.")),
    Strategy("reason", 1, "a question that needs several steps of reasoning to answer",
             _template("Rewrite the original prompt below so that answering it takes several explicit steps of "
                       "reasoning, each depending on the one before. It must stay self-contained and have one "
                       "well-defined answer.")),
)}

DEFAULT_STRATEGIES: tuple[str, ...] = tuple(STRATEGIES)


def strategy_tag(strategy: Strategy) -> str:
    return f"{strategy.name}@{strategy.version}"


def parse_strategies(text: str | Sequence[str]) -> list[Strategy]:
    """Strategies by name, in the order given: "breadth,deepen" or ["breadth", "deepen"]. A "NAME@VERSION" tag
    (as a job's params store them) must name the registered version: a template changed since is refused."""
    names = text.split(",") if isinstance(text, str) else list(text)
    chosen: list[Strategy] = []
    for raw in names:
        name, at, version = str(raw).strip().partition("@")
        name = name.strip().lower()
        if not name:
            continue
        if name not in STRATEGIES:
            raise MarginLensError(f"unknown rewrite strategy {name!r} (known: {', '.join(STRATEGIES)})")
        strategy = STRATEGIES[name]
        if at and version.strip() != str(strategy.version):
            raise MarginLensError(f"rewrite strategy {name!r} is at version {strategy.version}, not "
                                  f"{version.strip()!r}: its wording changed; submit the evolution again")
        if strategy in chosen:
            raise MarginLensError(f"rewrite strategy {name!r} is given twice")
        chosen.append(strategy)
    if not chosen:
        raise MarginLensError(f"no rewrite strategy given (known: {', '.join(STRATEGIES)})")
    return chosen


_FENCE = re.compile(r"\A```[^\n`]*\n(.*?)\n?```\Z", re.DOTALL)
# A short lead-in label such as "Rewritten prompt:", "**New question:**" or "Here is the new prompt:".
_LABEL = re.compile(
    r"\A(?:\*\*|__)?\s*(?:here\s+is|here's)?\s*(?:the|a|my|your)?\s*"
    r"(?:(?:new|rewritten|revised|evolved|modified|updated|improved|harder|final)\s+)?"
    r"(?:prompt|question|instruction|rewrite|(?:new|rewritten|revised|evolved|modified|updated|improved)\s+version)"
    r"\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?",
    re.IGNORECASE)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb", "`": "`"}


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
        inner = text[1:-1]
        # Only a quote pair around the whole text: '"A" or "B"' starts and ends with quotes but is not wrapped.
        if text[0] not in inner and text[-1] not in inner:
            return inner
    return text


def clean_rewrite(text: str) -> str:
    """`text` without surrounding whitespace, a code fence around all of it, a leading label, and quotes around
    all of it, peeled in whatever nesting they come (a label inside a fence, quotes after a label)."""
    current = (text or "").strip()
    while True:
        fenced = _FENCE.match(current)
        peeled = fenced.group(1) if fenced else current
        peeled = _LABEL.sub("", peeled, count=1).strip()
        peeled = _unquote(peeled).strip()
        if peeled == current:
            return current
        current = peeled
