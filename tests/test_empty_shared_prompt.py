"""Pairs whose two responses share no prompt token, scored exactly by every CPU layout.

Reference-mode truncation near a short max_length can cut the two responses' contexts at different
offsets (core.scoring.tokenization), leaving `prompt` empty and each context as skipped tokens of its
continuation. Such pairs are built here through the real tokenisation (random rows as in
tests/test_reference_truncation.py), mixed with ordinary ones, and every layout must give the sums of a
plain forward of context + response. A response with no context at all is refused.
"""

from __future__ import annotations

import random

import pytest
import torch
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.logprobs import ImplicitScorer
from marginlens.core.scoring.models import load_causal_lm
from marginlens.core.scoring.tokenization import TokenizedPair, tokenize_pairs
from test_attention_kinds import TOLERANCE, cpu_layouts, make_model, plain_logp
from test_reference_truncation import TEMPLATES, random_text
from tiny_models import single_thread

single_thread()

# Full attention (tree and packing apply) and a sliding window (padded prompts of different lengths are
# scored per prompt length there, so a split pair's halves are scored apart).
KINDS = ["llama-full", "mistral-sliding"]


@pytest.fixture(scope="module", params=KINDS)
def kind_model(request, tmp_path_factory):
    folder = make_model(tmp_path_factory.mktemp(request.param), request.param)
    model, tokenizer, _ = load_causal_lm(str(folder), dtype="float32")
    tokenizer.chat_template = TEMPLATES["qa"]
    return request.param, model, tokenizer


def reference_pairs(tokenizer, want_unshared: int, want_shared: int) -> list[TokenizedPair]:
    """Reference-mode pairs of random rows at short max lengths: some sharing no prompt token, some sharing."""
    rng = random.Random("empty-shared-prompt")
    unshared: list[TokenizedPair] = []
    shared: list[TokenizedPair] = []
    for _ in range(2000):
        messages = [{"role": "user", "content": random_text(rng, 6)}]
        max_length = rng.randint(8, 24)
        (pair,) = tokenize_pairs(tokenizer, [messages], [random_text(rng, 8)], [random_text(rng, 8)],
                                 mode="reference", max_length=max_length,
                                 max_prompt_length=rng.randint(1, min(max_length - 1, 20)))
        bucket = unshared if not pair.prompt else shared
        if len(bucket) < (want_unshared if bucket is unshared else want_shared):
            bucket.append(pair)
        if len(unshared) == want_unshared and len(shared) == want_shared:
            break
    assert len(unshared) == want_unshared and len(shared) == want_shared
    return unshared + shared


def test_every_layout_scores_pairs_without_a_shared_prompt(kind_model):
    kind, model, tokenizer = kind_model
    pairs = reference_pairs(tokenizer, want_unshared=6, want_shared=3)
    unshared = [p for p in pairs if not p.prompt]
    # What the issue is about: both contexts ride in the continuations, and they differ.
    assert all(p.chosen_skip >= 1 and p.rejected_skip >= 1 for p in unshared)
    assert any(p.chosen[: p.chosen_skip] != p.rejected[: p.rejected_skip] for p in unshared)
    expected = [(plain_logp(model, p.prompt, p.chosen, p.chosen_skip),
                 plain_logp(model, p.prompt, p.rejected, p.rejected_skip)) for p in pairs]

    layouts = cpu_layouts(model, tokenizer)
    assert len(layouts["padded shared prompt"].plan(pairs)) == 1  # empty and non-empty prompts in one batch
    assert layouts["per-pair"].max_pairs == 1
    if kind == "llama-full":
        assert layouts["cpu default"].tree
        layouts["packed"] = ImplicitScorer(model, tokenizer, packing=True, token_budget=100000)

    for name, scorer in layouts.items():
        got = [None] * len(pairs)
        for indices, results in scorer.iter_scored(pairs):
            for i, r in zip(indices, results, strict=True):
                got[i] = r
        for p, g, (chosen, rejected) in zip(pairs, got, expected, strict=True):
            assert (g.chosen_ntok, g.rejected_ntok) == (p.chosen_ntok, p.rejected_ntok), (name, p)
            assert g.chosen_logp == pytest.approx(chosen, abs=TOLERANCE), (name, p)
            assert g.rejected_logp == pytest.approx(rejected, abs=TOLERANCE), (name, p)


def test_a_response_without_any_context_is_refused(kind_model):
    kind, model, tokenizer = kind_model
    bare = TokenizedPair([], [5, 6, 7], [8, 9], chosen_skip=1, rejected_skip=0)  # rejected's 8 follows nothing
    fine = TokenizedPair([3], [5, 6], [8, 9])
    scorers = [ImplicitScorer(model, tokenizer, tree=False),
               ImplicitScorer(model, tokenizer, tree=False, max_pairs=256),
               ImplicitScorer(model, tokenizer)]
    if kind == "llama-full":
        scorers.append(ImplicitScorer(model, tokenizer, packing=True))
    for scorer in scorers:
        for batch in ([bare], [fine, bare]):
            with pytest.raises(MarginLensError, match="a response has no context after templating"):
                scorer.score_batch(batch)
    with torch.no_grad():
        assert scorers[0].score_batch([fine])[0].chosen_ntok == 2  # the check refuses the bare pair only
