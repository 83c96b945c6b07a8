"""The CPU layout of the implicit scorer (core.scoring.pair_tree): the worked example of its docstring, and
one forward per pair giving the shared-prompt path's numbers, in float32 and in bf16."""

from __future__ import annotations

import pytest
import torch
from marginlens.core.scoring.logprobs import ImplicitScorer
from marginlens.core.scoring.models import load_causal_lm
from marginlens.core.scoring.pair_tree import plan_tree_batches, supports_tree, tree_layout, tree_mask
from marginlens.core.scoring.tokenization import TokenizedPair
from tiny_models import pairs_of_mixed_lengths, single_thread, tiny_llama  # noqa: F401

single_thread()


def test_worked_example():
    pair = TokenizedPair(prompt=[10, 11], chosen=[20, 21], rejected=[30])
    ids, positions, predictors, targets = tree_layout(pair)
    assert ids == [10, 11, 20, 21, 30]
    assert positions == [0, 1, 2, 3, 2]  # the rejected response restarts where the prompt ends
    assert predictors == [1, 2, 1] and targets == [2, 3, 4]  # r0 is predicted by p1, not by c1
    allowed = (tree_mask(pair, 6, torch.float32) == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0],
                       [1, 1, 0, 0, 1, 0],
                       [0, 0, 0, 0, 0, 1]]  # a padding column attends to itself only


def test_batches_group_rows_of_similar_length_under_the_budget():
    pairs = [TokenizedPair([1] * p, [2] * c, [3] * r) for p, c, r in [(5, 40, 3), (2, 2, 2), (3, 3, 2), (50, 60, 60)]]
    assert plan_tree_batches(pairs, token_budget=100, max_pairs=8) == [[1, 2], [0], [3]]
    assert plan_tree_batches(pairs, token_budget=100, max_pairs=1) == [[1], [2], [0], [3]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tree_rows_equal_the_shared_prompt_path(tiny_llama, dtype):  # noqa: F811
    model, tokenizer, _ = load_causal_lm(str(tiny_llama), dtype=dtype)
    assert supports_tree(model)
    data = pairs_of_mixed_lengths(10, seed=5)
    args = ([d["prompt"] for d in data], [d["chosen"] for d in data], [d["rejected"] for d in data])
    tree = ImplicitScorer(model, tokenizer, token_budget=1500)
    shared = ImplicitScorer(model, tokenizer, tree=False)
    assert tree.tree and not shared.tree and shared.max_pairs == 1
    assert len(tree.plan(tree.tokenize(*args))) < len(data)  # some rows really share a forward
    tolerance = 1e-4 if dtype == "float32" else 0.05  # bf16: another summation order of the same layers
    for t, s in zip(tree.score(*args), shared.score(*args), strict=True):
        assert (t.chosen_ntok, t.rejected_ntok) == (s.chosen_ntok, s.rejected_ntok)
        assert t.chosen_logp == pytest.approx(s.chosen_logp, abs=tolerance, rel=2e-3)
        assert t.rejected_logp == pytest.approx(s.rejected_logp, abs=tolerance, rel=2e-3)
