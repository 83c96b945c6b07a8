"""Padding-free packing (core.scoring.packing) is exact against the padded and per-pair paths on CPU,
plans within its budget, and refuses to run where a model's attention would not keep documents apart.
(Its exactness against the naive per-example computation is in tests/test_logprobs.py, "packed-path";
the CUDA kernel is checked by bench/gpu_check.py.)"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring import packing
from marginlens.core.scoring.logprobs import ImplicitScorer
from marginlens.core.scoring.models import load_causal_lm
from marginlens.core.scoring.packing import packed_cost, plan_packs
from marginlens.core.scoring.pair_tree import supports_tree
from marginlens.core.scoring.tokenization import TokenizedPair
from tiny_models import pairs_of_mixed_lengths, single_thread, smollm2, tiny_llama  # noqa: F401

single_thread()


def _args(data):
    return [d["prompt"] for d in data], [d["chosen"] for d in data], [d["rejected"] for d in data]


def test_plan_packs_covers_every_pair_within_the_budget():
    pairs = [TokenizedPair(list(range(1, 2 + i % 5)), [5] * (1 + i % 7), [6] * (i % 3)) for i in range(30)]
    packs = plan_packs(pairs, token_budget=40, max_pairs=6)
    assert sorted(i for p in packs for i in p) == list(range(30))
    assert all(len(p) <= 6 for p in packs)
    assert all(len(p) == 1 or sum(packed_cost(pairs[i]) for i in p) <= 40 for p in packs)
    assert packs == plan_packs(pairs, token_budget=40, max_pairs=6)  # deterministic: a resumed job replans the same
    assert packed_cost(TokenizedPair([1, 2], [3], [4, 5])) == 2 * 2 + 1 + 2  # the prompt twice, no padding


def test_packed_equals_padded_and_per_pair_on_a_tiny_llama(tiny_llama):  # noqa: F811
    model, tokenizer, _ = load_causal_lm(str(tiny_llama))
    data = pairs_of_mixed_lengths(16, seed=11)
    per_pair = ImplicitScorer(model, tokenizer, tree=False).score(*_args(data))  # one unpadded pair per batch
    padded = ImplicitScorer(model, tokenizer, max_pairs=256, token_budget=100000, tree=False).score(*_args(data))
    calls = packing.KERNEL_CALLS["sdpa_per_document"]
    scorer = ImplicitScorer(model, tokenizer, packing=True, token_budget=250)
    packed = scorer.score(*_args(data))
    assert len(scorer.plan(scorer.tokenize(*_args(data)))) > 2  # several packs of different sizes
    assert packing.KERNEL_CALLS["sdpa_per_document"] > calls  # the packed attention really ran
    for a, b, c in zip(per_pair, padded, packed, strict=True):
        assert (a.chosen_ntok, a.rejected_ntok) == (b.chosen_ntok, b.rejected_ntok) == (c.chosen_ntok, c.rejected_ntok)
        assert (c.chosen_logp, c.rejected_logp) == pytest.approx((a.chosen_logp, a.rejected_logp), abs=1e-4)
        assert (b.chosen_logp, b.rejected_logp) == pytest.approx((a.chosen_logp, a.rejected_logp), abs=1e-4)
    # The model now routes through packed attention; unpacked calls still get plain sdpa, unchanged.
    again = ImplicitScorer(model, tokenizer, max_pairs=256, token_budget=100000, tree=False).score(*_args(data))
    assert ImplicitScorer(model, tokenizer).tree  # and the CPU's tree rows (core.scoring.pair_tree) still apply
    assert [(r.chosen_logp, r.rejected_logp) for r in again] == [(r.chosen_logp, r.rejected_logp) for r in padded]


def test_packing_is_off_by_default_on_cpu_and_refused_where_unsupported(tiny_llama):  # noqa: F811
    model, tokenizer, _ = load_causal_lm(str(tiny_llama))
    assert ImplicitScorer(model, tokenizer).packing is False
    model.set_attn_implementation("eager")
    with pytest.raises(MarginLensError, match="packing is not supported for this model: attention implementation 'eager'"):
        ImplicitScorer(model, tokenizer, packing=True)


def test_a_model_whose_attention_ignores_the_boundaries_fails_loudly(tiny_llama):  # noqa: F811
    model, tokenizer, _ = load_causal_lm(str(tiny_llama))
    scorer = ImplicitScorer(model, tokenizer, packing=True)
    # As if the model's attention bypassed transformers' attention interface: no packed call would happen,
    # and documents would see each other.
    model.set_attn_implementation("sdpa")
    with pytest.raises(MarginLensError, match="0 of this model.s 2 attention layers went through packed attention"):
        scorer.score(*_args(pairs_of_mixed_lengths(3, seed=1)))


def test_one_layer_outside_packed_attention_fails_loudly(tiny_llama):  # noqa: F811
    model, tokenizer, _ = load_causal_lm(str(tiny_llama))
    scorer = ImplicitScorer(model, tokenizer, packing=True)
    # The last layer alone bypasses packed attention (its own config asks for plain sdpa): the first layer's
    # call made an "at least one" check pass while that layer attended across documents.
    attention = model.model.layers[-1].self_attn
    attention.config = copy.copy(attention.config)
    attention.config._attn_implementation = "sdpa"
    with pytest.raises(MarginLensError, match="1 of this model's 2 attention layers went through packed attention"):
        scorer.score(*_args(pairs_of_mixed_lengths(3, seed=1)))


@pytest.mark.parametrize("layer_types", [["full_attention", "sliding_attention"], ["chunked_attention"] * 2,
                                         ["full_attention", "linear_attention"]])
def test_both_layouts_refuse_models_that_mask_by_themselves(tiny_llama, layer_types):  # noqa: F811
    model, _, _ = load_causal_lm(str(tiny_llama))
    assert packing.supports_packing(model) is None and supports_tree(model)
    model.config.layer_types = layer_types
    assert "layers of type" in packing.supports_packing(model) and not supports_tree(model)
    model.config.layer_types = None
    model.config.get_text_config = lambda: SimpleNamespace(_attn_implementation="sdpa", sliding_window=4096)
    # a multimodal model's text config is the one that says how its language model masks
    assert packing.supports_packing(model) == "sliding-window attention" and not supports_tree(model)


def test_packed_equals_padded_on_smollm2(smollm2):  # noqa: F811
    model, tokenizer, _ = load_causal_lm(str(smollm2))
    data = pairs_of_mixed_lengths(6, seed=4)
    padded = ImplicitScorer(model, tokenizer).score(*_args(data))
    packed = ImplicitScorer(model, tokenizer, packing=True).score(*_args(data))
    for a, c in zip(padded, packed, strict=True):
        assert (a.chosen_ntok, a.rejected_ntok) == (c.chosen_ntok, c.rejected_ntok)
        assert (c.chosen_logp, c.rejected_logp) == pytest.approx((a.chosen_logp, a.rejected_logp), abs=2e-3)
