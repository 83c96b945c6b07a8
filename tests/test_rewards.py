"""Explicit scorer: reward model (batched == one at a time) and dataset columns."""

from __future__ import annotations

import json

import pytest
import torch
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.models import load_reward_model
from marginlens.core.scoring.rewards import RewardScorer, column_rewards
from tiny_models import make_tiny_llama, pairs_of_mixed_lengths, single_thread, tiny_reward  # noqa: F401

single_thread()


def test_reward_model_batched_equals_one_at_a_time(tiny_reward):  # noqa: F811
    model, tokenizer, _ = load_reward_model(str(tiny_reward))
    data = pairs_of_mixed_lengths(12, seed=4)
    scorer = RewardScorer(model, tokenizer, token_budget=400)
    got = scorer.score([d["prompt"] for d in data], [d["chosen"] for d in data], [d["rejected"] for d in data])
    for d, g in zip(data, got, strict=True):
        for response, value in ((d["chosen"], g.chosen_reward), (d["rejected"], g.rejected_reward)):
            # The reward model's own template, exactly as rendered (its trailing newline too), no extra EOS.
            text = tokenizer.apply_chat_template(d["prompt"] + [{"role": "assistant", "content": response}],
                                                 tokenize=False)
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                expected = model(input_ids=ids).logits[0, 0].item()
            assert value == pytest.approx(expected, abs=1e-4)
    assert len({round(g.chosen_reward, 6) for g in got}) > 6  # really different inputs, not a constant


def test_not_a_reward_model(tmp_path):
    folder = make_tiny_llama(tmp_path / "lm")
    with pytest.raises(MarginLensError, match="not a reward model.*LlamaForCausalLM"):
        load_reward_model(str(folder))


def _rows(records, canonical=None):
    return [{"pair_id": f"p{i}", "source_row": i, "score_chosen": (canonical or {}).get("c"),
             "score_rejected": (canonical or {}).get("r"), "source_json": json.dumps(rec)}
            for i, rec in enumerate(records)]


def test_column_scores():
    rows = _rows([{"all_rm_scores": [0.5, 2.0, -1.0], "a": 3, "b": 1.5}], canonical={"c": 4.0, "r": 1.0})
    assert column_rewards(rows, None)[0] == column_rewards(rows, "score_chosen,score_rejected")[0]
    assert (column_rewards(rows, None)[0].chosen_reward, column_rewards(rows, None)[0].rejected_reward) == (4.0, 1.0)
    best = column_rewards(rows, "all_rm_scores")[0]
    assert (best.chosen_reward, best.rejected_reward) == (2.0, -1.0)  # max - min = 3.0
    mapped = column_rewards(rows, "a, b")[0]
    assert (mapped.chosen_reward, mapped.rejected_reward) == (3.0, 1.5)


def test_column_scores_errors_name_row_and_field():
    rows = _rows([{"a": 1, "b": 2}, {"a": "high", "b": 2}])
    with pytest.raises(MarginLensError, match=r"dataset 'ds': row 1, field 'a': expected a number, got 'high'"):
        column_rewards(rows, "a,b", "ds")
    with pytest.raises(MarginLensError, match=r"row 0, field 'zz': missing"):
        column_rewards(rows, "zz,b", "ds")
    with pytest.raises(MarginLensError, match=r"row 0, field 'a': expected a list of at least two scores"):
        column_rewards(rows, "a", "ds")
    with pytest.raises(MarginLensError, match="one list column or two columns"):
        column_rewards(rows, "a,b,c", "ds")
