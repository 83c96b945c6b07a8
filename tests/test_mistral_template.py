"""`--chat-template mistral-simpo`: the Mistral template the authors' scoring script swaps in for Mistral
models. Each expected string below was written by reading that template (infer_scripts/infer_dataset.py,
MISTRAL_CHAT_TEMPLATE), not by running it: [INST]-wrapped user turns, " answer EOS" assistant turns, a
leading system turn merged into the first turn, no BOS and no generation prompt of its own."""

from __future__ import annotations

import pytest
from marginlens.core.scoring.chat_templates import BUILTIN_TEMPLATES, MISTRAL_SIMPO, read_chat_template
from marginlens.core.scoring.tokenization import Renderer
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast


def mistral_like_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = read_chat_template("mistral-simpo")
    return tok


USER, SYSTEM, ASSISTANT = "user", "system", "assistant"


def turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in pairs]


CASES = [
    # one user turn: the prompt; the template has no generation prompt, so both renderings agree
    (turns((USER, "What is 2+2?")), True, "[INST] What is 2+2? [/INST]"),
    (turns((USER, "What is 2+2?")), False, "[INST] What is 2+2? [/INST]"),
    # the empty system turn reference mode inserts leaves no trace; the content is trimmed
    (turns((SYSTEM, ""), (USER, "  Hi \n")), False, "[INST] Hi [/INST]"),
    # a real system turn leads the first remaining turn after a blank line
    (turns((SYSTEM, " Be brief. "), (USER, "What is 2+2?"), (ASSISTANT, " 4 ")), False,
     "[INST] Be brief.\n\nWhat is 2+2? [/INST] 4 </s>"),
    # two exchanges: only the first turn gets the system text
    (turns((SYSTEM, "S"), (USER, "a"), (ASSISTANT, "b"), (USER, " c"), (ASSISTANT, "d ")), False,
     "[INST] S\n\na [/INST] b </s>[INST] c [/INST] d </s>"),
    # the response rendered on its own (reference mode's chosen/rejected text)
    (turns((ASSISTANT, "4, I think")), False, " 4, I think </s>"),
    # a system turn before an assistant turn is merged into it too
    (turns((SYSTEM, "S"), (ASSISTANT, "x")), False, " S\n\nx </s>"),
    # a system turn that is not first is left out, as the reference's loop renders user/assistant only
    (turns((USER, "a"), (SYSTEM, "ignored"), (ASSISTANT, "b")), False, "[INST] a [/INST] b </s>"),
]


@pytest.mark.parametrize(("messages", "generation", "expected"), CASES)
def test_mistral_simpo_renders_the_references_text(messages, generation, expected):
    assert Renderer(mistral_like_tokenizer()).render(messages, generation) == expected


def test_mistral_simpo_is_a_builtin_name():
    assert BUILTIN_TEMPLATES["mistral-simpo"] is MISTRAL_SIMPO
    assert "bos_token" not in MISTRAL_SIMPO  # the tokenizer adds BOS when the text is tokenised, as there
