"""Fidelity with real chat templates: Gemma in `--mode reference` (SimPO's Gemma config swaps the
template: `--chat-template gemma-simpo`), the reward model's input exactly as rendered (trailing newline
kept), `--chat-template` in the fingerprint, and the DPO form refusing tables tokenised differently.
Uses the real Gemma 3 tokenizer (tests/helpers_gemma.py); no model is needed for token ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from helpers_data import make_dataset, standard_records
from helpers_gemma import gemma_tokenizer
from marginlens.core.cli import main
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.builtin_scorers import LogprobScorer
from marginlens.core.scoring.chat_templates import GEMMA_SIMPO, read_chat_template
from marginlens.core.scoring.score_spec import ScoreSpec
from marginlens.core.scoring.score_tables import save_score_table
from marginlens.core.scoring.tokenization import Renderer, TokenizedPair, _with_empty_system, tokenize_pairs
from marginlens.core.selection.margins import load_margins
from tiny_models import make_tiny_llama

# Gemma 2's own template, in substance: no system role, and roles must alternate starting with the user.
GEMMA_OWN = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' + m['content'] | trim"
    " + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
PROMPT = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def gemma():
    return gemma_tokenizer()


def with_template(tokenizer, template):
    tokenizer.chat_template = template
    return tokenizer


def test_gemma_simpo_template_renders_gemma_turns(gemma):
    render = Renderer(with_template(gemma, GEMMA_SIMPO)).render
    assert render(PROMPT, True) == "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    # An empty system turn (what reference mode inserts) leaves no trace; a real one leads the first turn.
    assert render([{"role": "system", "content": ""}, {"role": "user", "content": " Hi "}], False) == \
        "<bos><start_of_turn>user\nHi<end_of_turn>\n"
    assert render([{"role": "system", "content": "Be brief."}, *PROMPT], False) == \
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n"
    assert render([{"role": "assistant", "content": "4"}], False) == "<bos><start_of_turn>model\n4<end_of_turn>\n"


def test_reference_mode_with_gemmas_own_template_names_the_fix(gemma):
    tokenizer = with_template(gemma, GEMMA_OWN)
    renderer = Renderer(tokenizer)
    # "system" is in the template only to refuse it: no empty system turn is inserted.
    assert _with_empty_system(renderer, PROMPT) == PROMPT
    with pytest.raises(MarginLensError, match="refuses that.*roles must alternate.*--chat-template gemma-simpo"):
        tokenize_pairs(tokenizer, [PROMPT], ["4"], ["5"], mode="reference")


def test_reference_mode_with_gemma_simpo_template(gemma):
    tokenizer = with_template(gemma, GEMMA_SIMPO)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    got = tokenize_pairs(tokenizer, [PROMPT], ["4"], ["5, I think"], mode="reference")[0]
    prompt = ids("<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n")
    assert prompt[0] == tokenizer.bos_token_id
    assert got == TokenizedPair(prompt=prompt, chosen=ids("<start_of_turn>model\n4<end_of_turn>\n") + [tokenizer.eos_token_id],
                                rejected=ids("<start_of_turn>model\n5, I think<end_of_turn>\n") + [tokenizer.eos_token_id])


def test_reward_input_keeps_the_final_newline(gemma):
    tokenizer = with_template(gemma, GEMMA_SIMPO)
    end_of_turn, newline = tokenizer.convert_tokens_to_ids(["<end_of_turn>", "\n"])
    reward = tokenize_pairs(tokenizer, [PROMPT], ["4"], ["5"], append_eos=False)[0]
    full = tokenizer.apply_chat_template([*PROMPT, {"role": "assistant", "content": "4"}], tokenize=False)
    assert full.endswith("<end_of_turn>\n")
    # What a sequence classifier reads: the template's text to its last character, nothing added.
    assert reward.prompt + reward.chosen == tokenizer(full, add_special_tokens=False)["input_ids"]
    assert reward.chosen[-2:] == [end_of_turn, newline]
    policy = tokenize_pairs(tokenizer, [PROMPT], ["4"], ["5"])[0]  # the policy's response ends at its EOS
    assert policy.chosen[-2:] == [end_of_turn, tokenizer.eos_token_id]


def test_chat_template_is_in_the_fingerprint(tmp_path):
    folder = str(make_tiny_llama(tmp_path / "lm"))
    own = LogprobScorer.configure(ScoreSpec(dataset="d", device="cpu"), folder)
    swapped = LogprobScorer.configure(ScoreSpec(dataset="d", device="cpu", chat_template=GEMMA_SIMPO), folder)
    assert "chat_template" not in own.fingerprint_inputs()  # tables scored before the option keep their names
    assert swapped.fingerprint_inputs()["chat_template"] == GEMMA_SIMPO
    assert own.fingerprint() != swapped.fingerprint()
    assert read_chat_template("gemma-simpo") == GEMMA_SIMPO
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    assert read_chat_template(str(template)) == "{{ messages }}"


def test_cli_names_a_missing_template_file(ws, tmp_path, capsys):
    make_dataset(ws, "d", standard_records(2), tmp_path)
    code = main(["score", "d", "--workspace", str(ws.root), "--chat-template", str(tmp_path / "nope.jinja")])
    assert code != 0 and "nope.jinja" in capsys.readouterr().err


def _logprob_table(ws, dataset, fp, ids, spec):
    n = len(ids)
    table = pa.table({"pair_id": ids, "chosen_logp": np.full(n, -3.0), "chosen_ntok": np.full(n, 3),
                      "rejected_logp": np.full(n, -4.0), "rejected_ntok": np.full(n, 4),
                      "truncated": np.zeros(n, dtype=bool)})
    save_score_table(ws, dataset, fp, "logprob", table, model=fp, spec=spec)


def test_dpo_form_refuses_tables_tokenised_differently(ws, tmp_path):
    pairs = make_dataset(ws, "d", standard_records(3), tmp_path)
    ids = list(pairs["pair_id"])
    same = {"mode": "reference", "max_length": 2048, "max_prompt_length": 1800}
    _logprob_table(ws, "d", "pol", ids, same)
    _logprob_table(ws, "d", "ref", ids, same)
    _logprob_table(ws, "d", "ref-clean", ids, {**same, "mode": "clean"})
    _logprob_table(ws, "d", "ref-tpl", ids, {**same, "chat_template": GEMMA_SIMPO})
    assert list(load_margins(ws, "d", policy_fp="pol", reference_fp="ref")["m_im"]) == [0.0] * 3
    with pytest.raises(MarginLensError, match="tokenised differently.*policy mode reference, reference mode clean"):
        load_margins(ws, "d", policy_fp="pol", reference_fp="ref-clean")
    with pytest.raises(MarginLensError, match="policy own template, reference template [0-9a-f]{8}"):
        load_margins(ws, "d", policy_fp="pol", reference_fp="ref-tpl")
