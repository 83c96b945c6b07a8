"""Reference-mode tokenisation near max_length, token for token against SimPO's preprocessing.

`simpo_row` below re-states what SimPO does to one row (princeton-nlp/SimPO: run_simpo.py's
apply_chat_template for the "simpo" task, then SimPOTrainer.tokenize_row and build_tokenized_answer,
truncation_mode keep_end, its default): per response a context and an answer, the context cut first,
then the answer, each judged against the longer answer. MarginLens's TokenizedPair must give every
response the same full sequence (shared prompt + continuation) and the same label mask (the shared
prompt and the skipped tokens masked) on random rows where the tokenizer merges across the
prompt/answer boundary and the lengths are short enough that every cut happens.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from marginlens.core.scoring.tokenization import TokenizedPair, tokenize_pairs
from tiny_models import build_tokenizer

IGNORE = -100  # SimPO's label_pad_token_id

# The prompt ends mid-text ("A: ", or the user's own words), so an answer that starts with a letter merges
# with the prompt's last token. One template leaves BOS and EOS to the preprocessing, one renders both.
TEMPLATES = {
    "qa": ("{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }} A: "
           "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"),
    "glued": ("{{ bos_token }}{% for m in messages %}{{ m['content'] }}"
              "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"),
}
# Word fragments merge with each other (a prompt ending "cap" and an answer starting "ital"); spaces,
# newlines, digits and punctuation start new pre-tokens, so some boundaries merge and some do not.
WORDS = ["the", "cap", "ital", "Paris", "answer", "reward", "margin", "s", "ing", "blue", "green", "ü", "ünï"]
PIECES = [*WORDS, " ", " ", "  ", "\n", "?", "!", ":", "4", "42", ",", "."]


def random_text(rng: random.Random, most: int) -> str:
    """Often starting and ending with a word fragment, so the prompt/answer boundary falls inside a word."""
    n = rng.randint(0, most)
    return "".join(rng.choice(WORDS if i in (0, n - 1) and rng.random() < 0.7 else PIECES) for i in range(n))


def simpo_row(tokenizer, messages: list[dict], chosen: str, rejected: str, max_length: int,
              max_prompt_length: int) -> dict[str, list[int]]:
    """SimPO's chosen/rejected input_ids and labels for one row (decoder-only, keep_end)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False)

    def answer_text(content: str) -> str:
        text = tokenizer.apply_chat_template([{"role": "assistant", "content": content}], tokenize=False)
        return text[len(tokenizer.bos_token):] if text.startswith(tokenizer.bos_token) else text

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokenized_answer(answer: str) -> dict[str, list[int]]:
        full = encode(prompt + answer)
        prompt_ids = encode(prompt)
        start = len(prompt_ids)
        if prompt_ids != full[:start]:
            start -= 1
        return {"prompt_input_ids": full[:start], "input_ids": full[start:]}

    sides = {"chosen": tokenized_answer(answer_text(chosen)), "rejected": tokenized_answer(answer_text(rejected))}
    c_prompt, r_prompt = sides["chosen"]["prompt_input_ids"], sides["rejected"]["prompt_input_ids"]
    if sum(a != b for a, b in zip(c_prompt, r_prompt, strict=False)) > 1 or abs(len(c_prompt) - len(r_prompt)) > 1:
        raise ValueError("Chosen and rejected prompt_input_ids might only differ on the last token")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for side in sides.values():
        if not side["prompt_input_ids"] or side["prompt_input_ids"][0] != bos:
            side["prompt_input_ids"] = [bos] + side["prompt_input_ids"]
        if not side["input_ids"] or side["input_ids"][-1] != eos:
            side["input_ids"] = side["input_ids"] + [eos]
    longer = max(len(side["input_ids"]) for side in sides.values())
    for side in sides.values():
        if len(side["prompt_input_ids"]) + longer > max_length:
            side["prompt_input_ids"] = side["prompt_input_ids"][-max_prompt_length:]
    for side in sides.values():
        if len(side["prompt_input_ids"]) + longer > max_length:
            side["input_ids"] = side["input_ids"][: max_length - max_prompt_length]
    out = {}
    for name, side in sides.items():
        out[f"{name}_input_ids"] = side["prompt_input_ids"] + side["input_ids"]
        out[f"{name}_labels"] = [IGNORE] * len(side["prompt_input_ids"]) + side["input_ids"]
    return out


def marginlens_row(pair: TokenizedPair) -> dict[str, list[int]]:
    out = {}
    for name, cont, skip in (("chosen", pair.chosen, pair.chosen_skip), ("rejected", pair.rejected, pair.rejected_skip)):
        out[f"{name}_input_ids"] = pair.prompt + cont
        out[f"{name}_labels"] = [IGNORE] * (len(pair.prompt) + skip) + cont[skip:]
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return build_tokenizer(Path(tmp_path_factory.mktemp("reference_truncation_tokenizer")), chat=True)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_reference_mode_truncates_like_simpo(tokenizer, template: str):
    tokenizer.chat_template = TEMPLATES[template]
    rng = random.Random(f"reference-truncation-{template}")
    cases = []
    while len(cases) < 400:
        messages = [{"role": "user", "content": random_text(rng, 6)}]
        if rng.random() < 0.3:
            messages += [{"role": "assistant", "content": random_text(rng, 3)},
                         {"role": "user", "content": random_text(rng, 4)}]
        max_length = rng.randint(8, 24) if rng.random() < 0.9 else 2048
        max_prompt_length = rng.randint(1, min(max_length - 1, 20))
        cases.append((messages, random_text(rng, 8), random_text(rng, 8), max_length, max_prompt_length))

    compared = merged = contexts_cut = answers_cut = bos_dropped = 0
    for messages, chosen, rejected, max_length, max_prompt_length in cases:
        try:
            want = simpo_row(tokenizer, messages, chosen, rejected, max_length, max_prompt_length)
        except ValueError:  # SimPO refuses this row; nothing to match
            continue
        whole = simpo_row(tokenizer, messages, chosen, rejected, 10**6, 10**6 - 1)
        (pair,) = tokenize_pairs(tokenizer, [messages], [chosen], [rejected], mode="reference",
                                 max_length=max_length, max_prompt_length=max_prompt_length)
        assert marginlens_row(pair) == want, (messages, chosen, rejected, max_length, max_prompt_length, pair)
        assert pair.truncated == (want != whole)
        compared += 1
        merged += whole["chosen_labels"].count(IGNORE) != whole["rejected_labels"].count(IGNORE)
        for s in ("chosen", "rejected"):
            context, whole_context = want[f"{s}_labels"].count(IGNORE), whole[f"{s}_labels"].count(IGNORE)
            contexts_cut += context < whole_context
            answers_cut += len(want[f"{s}_labels"]) - context < len(whole[f"{s}_labels"]) - whole_context
            bos_dropped += want[f"{s}_input_ids"][0] != tokenizer.bos_token_id
    # The random rows exercised what the issue is about, not only the easy path.
    assert compared >= 380
    assert merged >= 15 and min(contexts_cut, answers_cut, bos_dropped) >= 40, (
        compared, merged, contexts_cut, answers_cut, bos_dropped)


def test_reference_tables_from_the_old_truncation_are_not_reused():
    """Reference-mode numbers changed near max_length: its fingerprints changed; clean mode's did not."""
    from marginlens.core.scoring.builtin_scorers import LogprobConfig, LogprobScorer

    def inputs(mode: str) -> dict:
        return LogprobScorer(LogprobConfig(model="m", identity="-", dtype="float32", mode=mode, max_length=64,
                                           max_prompt_length=32)).fingerprint_inputs()

    assert inputs("reference")["truncation"] == "per-response"
    assert "truncation" not in inputs("clean")
