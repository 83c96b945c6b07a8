"""The batched implicit scorer equals a plain one-example-at-a-time computation (float32, 1e-4)."""

from __future__ import annotations

import math

import pytest
import torch
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.logprobs import ImplicitScorer, plan_batches
from marginlens.core.scoring.models import load_causal_lm
from marginlens.core.scoring.tokenization import TokenizedPair, tokenize_pairs
from marginlens.core.selection.margins import dpo_margin, simpo_margin
from tiny_models import (  # noqa: F401
    make_tiny_classifier,
    pairs_of_mixed_lengths,
    single_thread,
    tiny_gpt2,
    tiny_llama,
)

single_thread()


def naive_clean_ids(tokenizer, messages, response):
    """The clean tokenisation, written out plainly for one response."""
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        suffix = full[len(prompt):].rstrip()
    else:
        prompt = tokenizer.bos_token + "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
        prompt += "Assistant:"
        suffix = " " + response
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    if not r or r[-1] != tokenizer.eos_token_id:
        r = r + [tokenizer.eos_token_id]
    return p, r


def naive_logp(model, prompt_ids, response_ids, skip=0):
    """Sum of log p(response token | everything before it), one unpadded sequence, full log-softmax."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    start = len(prompt_ids)
    return sum(logprobs[start + t - 1, response_ids[t]].item() for t in range(skip, len(response_ids)))


def naive_truncate(p, c, r, max_length, max_prompt_length):
    if len(p) + max(len(c), len(r)) > max_length:
        p = p[-max_prompt_length:]
        if len(p) + max(len(c), len(r)) > max_length:
            c, r = c[: max_length - max_prompt_length], r[: max_length - max_prompt_length]
    return p, c, r


@pytest.fixture(scope="module", params=["llama-chat", "gpt2-plain"])
def loaded(request, tiny_llama, tiny_gpt2):  # noqa: F811
    folder = tiny_llama if request.param == "llama-chat" else tiny_gpt2
    if request.param == "gpt2-plain":
        with pytest.warns(UserWarning, match="no chat template"):
            model, tokenizer, _ = load_causal_lm(str(folder))
            ImplicitScorer(model, tokenizer)
    else:
        model, tokenizer, _ = load_causal_lm(str(folder))
    return model, tokenizer


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("limits", [(2048, 1800), (40, 24)], ids=["no-truncation", "truncation"])
@pytest.mark.parametrize(("max_pairs", "packing"), [(None, False), (256, False), (None, True)],
                         ids=["cpu-tree-path", "padded-batch-path", "packed-path"])
def test_batched_equals_naive(loaded, padding_side, limits, max_pairs, packing):
    model, tokenizer = loaded
    tokenizer.padding_side = padding_side
    max_length, max_prompt_length = limits
    data = pairs_of_mixed_lengths(14, seed=3)
    # A small token budget forces several batches of different shapes (on the padded-batch path).
    scorer = ImplicitScorer(model, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                            token_budget=300, max_pairs=max_pairs, packing=packing, tree=None if max_pairs is None else False)
    assert scorer.max_pairs == 256  # on this CPU: tree rows, padded or packed batches
    assert scorer.tree == (max_pairs is None and not packing)
    assert scorer.packing == packing
    got = scorer.score([d["prompt"] for d in data], [d["chosen"] for d in data], [d["rejected"] for d in data])
    assert len(scorer.plan(scorer.tokenize([d["prompt"] for d in data], [d["chosen"] for d in data],
                                           [d["rejected"] for d in data]))) > 2
    truncated = 0
    for d, g in zip(data, got, strict=True):
        p, c = naive_clean_ids(tokenizer, d["prompt"], d["chosen"])
        _, r = naive_clean_ids(tokenizer, d["prompt"], d["rejected"])
        tp, tc, tr = naive_truncate(p, c, r, max_length, max_prompt_length)
        truncated += (tp, tc, tr) != (p, c, r)
        assert g.chosen_ntok == len(tc) and g.rejected_ntok == len(tr)
        assert g.chosen_logp == pytest.approx(naive_logp(model, tp, tc), abs=1e-4)
        assert g.rejected_logp == pytest.approx(naive_logp(model, tp, tr), abs=1e-4)
    if max_length == 40:
        assert truncated >= 5  # the truncation case really truncates prompts and responses
        pairs = scorer.tokenize([d["prompt"] for d in data], [d["chosen"] for d in data], [d["rejected"] for d in data])
        assert sum(p.truncated for p in pairs) == truncated
        assert all(p.n_tokens - len(p.prompt) <= 2 * (max_length - len(p.prompt)) for p in pairs)


def test_reference_mode_matches_simpo_preprocessing(tiny_llama):  # noqa: F811
    """reference mode: empty system turn inserted, prompt without generation prompt, templated assistant
    turn, joint split, BOS/EOS."""
    model, tokenizer, _ = load_causal_lm(str(tiny_llama))
    data = pairs_of_mixed_lengths(8, seed=5)
    scorer = ImplicitScorer(model, tokenizer, mode="reference")
    got = scorer.score([d["prompt"] for d in data], [d["chosen"] for d in data], [d["rejected"] for d in data])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    template = tokenizer.chat_template
    assert "<|im_start|>" in template or "system" in template  # so SimPO inserts empty system turns
    assert sum(d["prompt"][0]["role"] != "system" for d in data) >= 3
    for d, g in zip(data, got, strict=True):
        messages = d["prompt"]
        if messages[0]["role"] != "system":  # SimPO's maybe_insert_system_message, written plainly
            messages = [{"role": "system", "content": ""}, *messages]
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        for response, (logp, ntok) in ((d["chosen"], (g.chosen_logp, g.chosen_ntok)),
                                       (d["rejected"], (g.rejected_logp, g.rejected_ntok))):
            answer = tokenizer.apply_chat_template([{"role": "assistant", "content": response}], tokenize=False)
            answer = answer.removeprefix(tokenizer.bos_token)
            joint = tokenizer(prompt_text + answer, add_special_tokens=False)["input_ids"]
            split = len(prompt_ids) - (joint[: len(prompt_ids)] != prompt_ids)
            p, a = joint[:split], joint[split:]
            p = p if p and p[0] == bos else [bos, *p]
            a = a if a and a[-1] == eos else [*a, eos]
            assert a[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # the assistant header is scored
            assert ntok == len(a)
            assert logp == pytest.approx(naive_logp(model, p, a), abs=1e-4)


def test_unshared_context_token_is_not_scored(tiny_llama):  # noqa: F811
    """Reference mode can move the split one token back for one response only (a tokenizer merge
    across the boundary): that token is context for that response, neither shared nor scored."""
    model, tokenizer, _ = load_causal_lm(str(tiny_llama))
    pairs = [TokenizedPair(prompt=[1, 40, 41, 42], chosen=[43, 44, 45, 3], rejected=[50, 3], chosen_skip=1),
             TokenizedPair(prompt=[1, 60], chosen=[61, 3], rejected=[62, 63, 64, 65, 3], rejected_skip=2)]
    got = ImplicitScorer(model, tokenizer).score_batch(pairs)
    for p, g in zip(pairs, got, strict=True):
        assert (g.chosen_ntok, g.rejected_ntok) == (len(p.chosen) - p.chosen_skip, len(p.rejected) - p.rejected_skip)
        assert g.chosen_logp == pytest.approx(naive_logp(model, p.prompt, p.chosen, p.chosen_skip), abs=1e-4)
        assert g.rejected_logp == pytest.approx(naive_logp(model, p.prompt, p.rejected, p.rejected_skip), abs=1e-4)


def test_margins_derived_without_rerunning():
    assert simpo_margin(-10.0, 5, -30.0, 10) == pytest.approx(-2.0 - -3.0)
    assert dpo_margin(-10.0, -30.0, -12.0, -29.0, beta=0.1) == pytest.approx(0.1 * (2.0 - -1.0))
    assert dpo_margin(-10.0, -30.0, -10.0, -30.0) == 0.0  # policy == reference: identically zero
    assert math.isnan(simpo_margin(0.0, 0, 0.0, 0)) and math.isnan(simpo_margin(-1.0, 0, -1.0, 1))  # no mean


def test_batching_keeps_padding_small(tiny_llama):  # noqa: F811
    _, tokenizer, _ = load_causal_lm(str(tiny_llama))
    data = pairs_of_mixed_lengths(40, seed=9)
    pairs = tokenize_pairs(tokenizer, [d["prompt"] for d in data], [d["chosen"] for d in data],
                           [d["rejected"] for d in data])
    batches = plan_batches(pairs, token_budget=1500)
    assert sorted(i for b in batches for i in b) == list(range(40))
    padded = sum(len(b) * (max(len(pairs[i].prompt) for i in b) +
                           2 * max(max(len(pairs[i].chosen), len(pairs[i].rejected)) for i in b)) for b in batches)
    real = sum(len(p.prompt) + 2 * max(len(p.chosen), len(p.rejected)) for p in pairs)
    assert padded < 1.35 * real
    for b in batches:
        assert len(b) == 1 or len(b) * (max(len(pairs[i].prompt) for i in b) + 2 * max(
            max(len(pairs[i].chosen), len(pairs[i].rejected)) for i in b)) <= 1500


def test_out_of_memory_backs_off(tiny_llama, monkeypatch):  # noqa: F811
    model, tokenizer, _ = load_causal_lm(str(tiny_llama))
    data = pairs_of_mixed_lengths(10, seed=1)
    args = ([d["prompt"] for d in data], [d["chosen"] for d in data], [d["rejected"] for d in data])
    expected = ImplicitScorer(model, tokenizer, token_budget=100000, max_pairs=256).score(*args)
    scorer = ImplicitScorer(model, tokenizer, token_budget=100000, max_pairs=256)
    real = scorer.score_batch

    def limited(pairs):  # the "device" holds at most 3 pairs at once
        if len(pairs) > 3:
            raise torch.OutOfMemoryError("simulated")
        return real(pairs)

    monkeypatch.setattr(scorer, "score_batch", limited)
    got = scorer.score(*args)
    for g, e in zip(got, expected, strict=True):  # other batch shapes: equal up to float rounding
        assert (g.chosen_ntok, g.rejected_ntok) == (e.chosen_ntok, e.rejected_ntok)
        assert (g.chosen_logp, g.rejected_logp) == pytest.approx((e.chosen_logp, e.rejected_logp), abs=1e-4)
    assert scorer.token_budget < 100000


def test_not_a_causal_lm_and_bad_path(tmp_path):
    folder = make_tiny_classifier(tmp_path / "classifier", num_labels=3)
    with pytest.raises(MarginLensError, match="not a causal language model.*LlamaForSequenceClassification"):
        load_causal_lm(str(folder))
    with pytest.raises(MarginLensError, match="not found|not a local model folder"):
        load_causal_lm(str(tmp_path / "no-such-model"))
    with pytest.raises(MarginLensError, match="not found|not on the Hub"):
        load_causal_lm("nobody-here/no-such-model-xyz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MarginLensError, match="no config.json"):
        load_causal_lm(str(tmp_path / "empty"))
