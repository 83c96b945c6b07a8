"""Turning (prompt messages, chosen, rejected) into token ids the scorers consume.

Two modes; the mode is part of a scorer's fingerprint:

clean (default)
    prompt   = chat template over the prompt messages *with* the generation prompt
    response = what the template adds for the assistant turn after that (content + end-of-turn,
               trailing whitespace dropped), tokenized on its own, EOS appended unless it is
               already the last token. Reward models (append_eos=False) get exactly what the
               template renders, trailing whitespace included: a sequence classifier reads the last
               token, and Gemma's or ChatML's turn ends "<end_of_turn>\n" / "<|im_end|>\n".
reference
    SimPO's preprocessing, reproduced so users can match the paper's numbers: the prompt is
    rendered *without* the generation prompt; the assistant message is rendered alone through the
    template (its header and end-of-turn count as response tokens), a leading BOS string is
    stripped (a template that refuses a lone assistant turn, as Gemma's do, is an error naming
    --chat-template: SimPO's Gemma config swaps the template, core.scoring.chat_templates);
    prompt+response is tokenized jointly and split at the prompt's length, one token
    earlier when the tokenizer merged across the boundary; each response's context (the joint
    tokens before its split) gets BOS prepended if missing, its response EOS appended if missing.

Worked example, reference mode (repeated by tests/test_scoring_examples.py): a byte-level BPE trained
locally on "Q: Capital of France? A: Paris" and "Q: Capital of Italy? A: Rome" (vocabulary 280, <s> = 0,
</s> = 1; Ġ is a space), whose template renders a user turn as "Q: {content} A: " and an assistant
turn as "{content}</s>". Prompt [user: "Capital of France?"], chosen "Paris", rejected "" (empty):

    prompt      "Q: Capital of France? A: "          Q  :  ĠCapital Ġof ĠFr an  ce  ?  ĠA  :  Ġ
                                                     50 27 267      266 277 272 273 32 264 27 222
    + chosen    "Q: Capital of France? A: Paris</s>" ... ĠA  :  ĠPa ris </s>
                                                     ... 264 27 279 276 1
    + rejected  "Q: Capital of France? A: </s>"      ... ĠA  :  Ġ   </s>
                                                     ... 264 27 222 1

Joined with "Paris" the prompt's trailing space merged into "ĠPa": the prompt's 11 ids are no prefix
of the joint ones, so chosen splits one token back, at 10; rejected splits at 11. The shared prompt
is the first 10 ids, BOS prepended; rejected's continuation starts one token early, and that token is
its context, not scored:

    TokenizedPair(prompt=[0, 50, 27, 267, 266, 277, 272, 273, 32, 264, 27],
                  chosen=[279, 276, 1], rejected=[222, 1], chosen_skip=0, rejected_skip=1)

Scored: chosen ĠPa ris </s> (3 tokens), rejected </s> (1). Clean mode, for contrast, keeps the prompt
whole (ending in Ġ 222) and tokenizes the response alone: chosen [270 Pa, 276 ris, 1 </s>], rejected [1].

A tokenizer without a chat template gets PLAIN_TEMPLATE (below) and a warning.

Truncation (both modes, as SimPO's tokenize_row does it, truncation_mode keep_end): each response
is judged on its own context (the shared prompt plus its skipped tokens) against the longer of the
two scored parts: when they exceed max_length, that context keeps its last max_prompt_length tokens
(a BOS among the dropped ones goes too); if that is still too long, that response keeps its first
max_length - max_prompt_length scored tokens. So after a boundary merge one response's context may be
cut and the other's not, or both cut at different offsets; the shared prompt is then what the two
contexts still have in common (possibly nothing, each context then rides in its continuation as
skipped tokens). Any cut marks the pair truncated.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marginlens.core.errors import MarginLensError

if TYPE_CHECKING:
    from marginlens.core.data.pairs import Message

MODES = ("clean", "reference")
DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_PROMPT_LENGTH = 1800

# Used when the tokenizer has no chat template. Rendered in Python (see _render_plain), documented
# here as the equivalent Jinja so users can reproduce it elsewhere:
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
# ...and a plain response is " " + content + eos_token (the space keeps BPE word tokens natural).


@dataclass
class TokenizedPair:
    """Token ids of one pair. Both responses continue the same `prompt`.

    `*_skip` leading tokens of a continuation are context, not scored: in reference mode the
    split between prompt and response can move back one token for one response only, so that
    token belongs to the prompt of that response but is not shared with the other one.
    """

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    chosen_skip: int = 0
    rejected_skip: int = 0
    truncated: bool = False

    @property
    def chosen_ntok(self) -> int:
        return len(self.chosen) - self.chosen_skip

    @property
    def rejected_ntok(self) -> int:
        return len(self.rejected) - self.rejected_skip

    @property
    def n_tokens(self) -> int:
        """Tokens the scorer processes for this pair (prompt once, both continuations)."""
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render_plain(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    text = tokenizer.bos_token or ""
    text += "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
    return text + ("Assistant:" if add_generation_prompt else "")


class Renderer:
    """Chat-template rendering for one tokenizer (warns once when it falls back to the plain one)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.templated = has_chat_template(tokenizer)
        self._accepts: dict[tuple[str, ...], bool] = {}
        if not self.templated:
            warnings.warn(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; using the plain "
                "'Role: content' template (core.scoring.tokenization.PLAIN_TEMPLATE)",
                stacklevel=3,
            )

    def accepts(self, messages: Sequence[Message]) -> bool:
        """Whether the template renders `messages` without raising (asked once per role sequence)."""
        roles = tuple(m["role"] for m in messages)
        if roles not in self._accepts:
            try:
                self.render(messages, add_generation_prompt=False)
                self._accepts[roles] = True
            except MarginLensError:
                self._accepts[roles] = False
        return self._accepts[roles]

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        if not self.templated:
            return _render_plain(self.tokenizer, messages, add_generation_prompt)
        try:
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # templates raise on e.g. a system turn they do not support
            roles = ",".join(m["role"] for m in messages)
            raise MarginLensError(f"the chat template rejected messages with roles [{roles}]: {exc}") from None

    def response_suffix(self, messages: Sequence[Message], prompt_text: str, content: str, exact: bool = False
                        ) -> str:
        """What the template appends for an assistant turn after the generation prompt (`exact`: trailing
        whitespace kept)."""
        if not self.templated:
            return " " + content
        full = self.render([*messages, {"role": "assistant", "content": content}], add_generation_prompt=False)
        if full.startswith(prompt_text):
            suffix = full[len(prompt_text):]
            # For the policy, whitespace after the end-of-turn token is the next turn's business.
            return suffix if exact else suffix.rstrip()
        # Templates that rewrite earlier turns once an answer follows (rare): score the content alone.
        return content


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _append_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def _cut(context: list[int], scored: list[int], longer: int, max_length: int, max_prompt_length: int
         ) -> tuple[list[int], list[int], bool]:
    """One response's (context, scored tokens) cut to fit; `longer` is the pair's longer scored part, so a
    short response is cut exactly when its partner needs it."""
    if len(context) + longer <= max_length:
        return context, scored, False
    cut_context = context[-max_prompt_length:]
    cut_scored = scored[: max_length - max_prompt_length] if len(cut_context) + longer > max_length else scored
    return cut_context, cut_scored, len(cut_context) < len(context) or len(cut_scored) < len(scored)


def _common_length(a: list[int], b: list[int]) -> int:
    if a == b:
        return len(a)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _assemble(chosen: tuple[list[int], list[int]], rejected: tuple[list[int], list[int]], max_length: int,
              max_prompt_length: int) -> TokenizedPair:
    """A pair from each response's own (context, scored tokens), truncated: the contexts' common start is
    the shared prompt, the rest of each context its continuation's skipped tokens."""
    longer = max(len(chosen[1]), len(rejected[1]))
    c_ctx, c_ids, c_cut = _cut(*chosen, longer, max_length, max_prompt_length)
    r_ctx, r_ids, r_cut = _cut(*rejected, longer, max_length, max_prompt_length)
    n = _common_length(c_ctx, r_ctx)
    return TokenizedPair(c_ctx[:n], c_ctx[n:] + c_ids, r_ctx[n:] + r_ids, len(c_ctx) - n, len(r_ctx) - n,
                         c_cut or r_cut)


def check_lengths(max_length: int, max_prompt_length: int) -> None:
    if not 0 < max_prompt_length < max_length:
        raise MarginLensError(
            f"max_prompt_length ({max_prompt_length}) must be positive and below max_length ({max_length})"
        )


def tokenize_pairs(
    tokenizer: Any,
    prompts: Sequence[Sequence[Message]],
    chosen: Sequence[str],
    rejected: Sequence[str],
    mode: str = "clean",
    max_length: int = DEFAULT_MAX_LENGTH,
    max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH,
    append_eos: bool = True,
    renderer: Renderer | None = None,
) -> list[TokenizedPair]:
    """Tokenize a chunk of pairs (batched tokenizer calls: much faster than one pair at a time).

    `append_eos=False` keeps exactly what the template renders (reward models score that).
    """
    if mode not in MODES:
        raise MarginLensError(f"unknown tokenisation mode {mode!r} (expected one of {', '.join(MODES)})")
    check_lengths(max_length, max_prompt_length)
    renderer = renderer or Renderer(tokenizer)
    eos = tokenizer.eos_token_id if append_eos else None
    if mode == "clean":
        sides = _clean(renderer, prompts, chosen, rejected, eos, exact=not append_eos)
    else:
        sides = _reference(renderer, prompts, chosen, rejected, eos)
    return [_assemble(c, r, max_length, max_prompt_length) for c, r in sides]


# Per pair: the chosen and the rejected response, each as (its context, its scored tokens).
_Sides = list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]]


def _clean(renderer: Renderer, prompts: Sequence[Sequence[Message]], chosen: Sequence[str],
           rejected: Sequence[str], eos: int | None, exact: bool = False) -> _Sides:
    tokenizer = renderer.tokenizer
    prompt_texts = [renderer.render(m, add_generation_prompt=True) for m in prompts]
    suffixes: list[str] = []
    for messages, text, c, r in zip(prompts, prompt_texts, chosen, rejected, strict=True):
        suffixes += [renderer.response_suffix(messages, text, c, exact), renderer.response_suffix(messages, text, r, exact)]
    prompt_ids = _ids(tokenizer, prompt_texts)
    response_ids = _ids(tokenizer, suffixes)
    return [((p, _append_eos(response_ids[2 * i], eos)), (p, _append_eos(response_ids[2 * i + 1], eos)))
            for i, p in enumerate(prompt_ids)]


def _with_empty_system(renderer: Renderer, messages: Sequence[Message]) -> list[Message]:
    """SimPO's preprocessing (auto_insert_empty_system_msg, on by default) gives the prompt an empty system
    turn when it has none and the template mentions "system" or "<|im_start|>": templates with a default
    system prompt (SmolLM2's, for one) then render an empty one instead. A template that mentions "system"
    only to refuse it (Gemma 2's error message) would fail there; it gets no system turn."""
    template = renderer.tokenizer.chat_template or ""
    if messages and messages[0]["role"] != "system" and ("system" in template or "<|im_start|>" in template):
        with_system = [{"role": "system", "content": ""}, *messages]
        if renderer.accepts(with_system):
            return with_system
    return list(messages)


def _reference(renderer: Renderer, prompts: Sequence[Sequence[Message]], chosen: Sequence[str],
               rejected: Sequence[str], eos: int | None) -> _Sides:
    tokenizer = renderer.tokenizer
    bos_text, bos = tokenizer.bos_token, tokenizer.bos_token_id
    prompt_texts = [renderer.render(_with_empty_system(renderer, m) if renderer.templated else m,
                                    add_generation_prompt=False) for m in prompts]

    def answer_text(content: str) -> str:
        if not renderer.templated:
            return " " + content
        try:
            text = renderer.render([{"role": "assistant", "content": content}], add_generation_prompt=False)
        except MarginLensError as exc:
            raise MarginLensError(
                f"--mode reference renders the assistant turn on its own, as SimPO does, and this tokenizer's chat "
                f"template refuses that ({exc}). SimPO's Gemma config replaces the template: pass --chat-template "
                "gemma-simpo, or --chat-template FILE with a template that accepts it") from None
        return text[len(bos_text):] if bos_text and text.startswith(bos_text) else text

    answers = [answer_text(x) for pair in zip(chosen, rejected, strict=True) for x in pair]
    prompt_ids = _ids(tokenizer, prompt_texts)
    joint_ids = _ids(tokenizer, [prompt_texts[i // 2] + a for i, a in enumerate(answers)])

    def side(prompt: list[int], joint: list[int]) -> tuple[list[int], list[int]]:
        split = len(prompt)
        if joint[:split] != prompt:  # the tokenizer merged the last prompt token into the answer
            split -= 1
        context = joint[:split]
        if bos is not None and (not context or context[0] != bos):
            context = [bos, *context]
        return context, _append_eos(joint[split:], eos)

    return [(side(p, joint_ids[2 * i]), side(p, joint_ids[2 * i + 1])) for i, p in enumerate(prompt_ids)]
