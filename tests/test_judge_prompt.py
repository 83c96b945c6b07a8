"""The pairwise prompt places the responses per order, and the parser never guesses a side."""

from __future__ import annotations

import pytest
from marginlens.core.audit.judge_prompt import (
    PROMPT_VERSION,
    build_messages,
    chosen_position,
    parse_answer,
    template_sha256,
    template_text,
)

PROMPT = [{"role": "user", "content": "What is 2+2?"}]


def test_orders_place_chosen_in_a_then_b():
    ab = build_messages(PROMPT, "It is 4.", "It is 5.", "AB")[-1]["content"]
    ba = build_messages(PROMPT, "It is 4.", "It is 5.", "BA")[-1]["content"]
    assert ab.index("It is 4.") < ab.index("It is 5.")
    assert ba.index("It is 5.") < ba.index("It is 4.")
    assert "What is 2+2?" in ab and "[Response A]" in ab
    assert chosen_position("AB") == "A" and chosen_position("BA") == "B"
    with pytest.raises(ValueError):
        chosen_position("AA")


def test_multi_turn_prompt_keeps_roles():
    prompt = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    text = build_messages(prompt, "a", "b", "AB")[-1]["content"]
    assert "System: Be terse." in text and "User: Hi" in text


def test_version_names_the_exact_text():
    assert PROMPT_VERSION and len(template_sha256()) == 64
    assert "Response A" in template_text()


@pytest.mark.parametrize(
    "text, choice, rationale",
    [
        ("A", "A", ""),
        (" b\n", "B", ""),
        ("[[B]]", "B", ""),
        ("Response A.", "A", ""),
        ("Answer: B", "B", ""),
        ('{"winner": "A", "rationale": "correct sum"}', "A", "correct sum"),
        ('```json\n{"winner": "Response B", "reason": "polite"}\n```', "B", "polite"),
        ('Sure! {"Winner": "b", "explanation": "shorter"} Hope that helps.', "B", "shorter"),
        ("After thinking, my verdict is [[A]].", "A", ""),
    ],
)
def test_parses_letters_and_small_json(text, choice, rationale):
    parsed = parse_answer(text)
    assert parsed.valid and parsed.choice == choice and parsed.rationale == rationale


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        "Both responses have their merits.",
        "A good answer would be B",  # prose that mentions letters is not an answer
        '{"winner": "tie", "rationale": "equal"}',
        "[[A]] or maybe [[B]]",
        '{"winner": "A"} {"winner": "B"}',
        "AB",
    ],
)
def test_unparseable_is_invalid_never_a_side(text):
    parsed = parse_answer(text)
    assert not parsed.valid and parsed.choice is None and parsed.reason
