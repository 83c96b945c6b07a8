"""Every layout of the implicit scorer equals a plain forward of [prompt + response], for every kind of
attention the loader accepts: full, grouped-query, sliding-window, mixed sliding/full layers and ALiBi.
Tiny random models (float32), saved and loaded back through from_pretrained; prompts of one batch differ
in length, and are longer than the window, so padding inside a batch would shift a window or an ALiBi bias.

A layout that is not exact for a kind must refuse it, and the scorer then picks one that is: the test
checks both the refusal and that what the scorer picked instead gives the plain numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring import model_masking, packing
from marginlens.core.scoring.logprobs import ImplicitScorer
from marginlens.core.scoring.models import load_causal_lm
from marginlens.core.scoring.pair_tree import supports_tree
from tiny_models import build_tokenizer, corpus, single_thread

single_thread()

WINDOW = 4
TOLERANCE = 1e-5  # nats, float32
INIT = 0.05  # logits of a few nats: a window or bias error shows, float32 rounding stays far below 1e-5

# kind -> (config class, model class, config options); every model has 2 layers, 4 heads of 16 dims.
_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
KINDS = {
    "llama-full": ("LlamaConfig", "LlamaForCausalLM", {**_SMALL, "num_key_value_heads": 4}),
    "llama-grouped-query": ("LlamaConfig", "LlamaForCausalLM", {**_SMALL, "num_key_value_heads": 1}),
    "mistral-sliding": ("MistralConfig", "MistralForCausalLM",
                        {**_SMALL, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": WINDOW}),
    "gemma2-mixed": ("Gemma2Config", "Gemma2ForCausalLM",
                     {**_SMALL, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": WINDOW,
                      "query_pre_attn_scalar": 16}),
    "gemma3-mixed": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                     {**_SMALL, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": WINDOW,
                      "query_pre_attn_scalar": 16, "layer_types": ["sliding_attention", "full_attention"]}),
    "falcon-alibi": ("FalconConfig", "FalconForCausalLM",
                     {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "alibi": True}),
    "bloom-alibi": ("BloomConfig", "BloomForCausalLM", {"hidden_size": 64, "n_layer": 2, "n_head": 4}),
    "mpt-alibi": ("MptConfig", "MptForCausalLM",
                  {"d_model": 64, "n_layers": 2, "n_heads": 4, "expansion_ratio": 2, "max_seq_len": 512}),
}
# Right-padded prompts move these models' tokens within what their attention counts (KV-cache slots).
SLOT_COUNTING = {"mistral-sliding", "gemma2-mixed", "gemma3-mixed", "mpt-alibi"}
# Where the CPU tree rows and packing are exact: full attention whose positions come from position ids.
MASK_DRIVEN_OK = {"llama-full", "llama-grouped-query"}


def make_model(folder: Path, kind: str) -> Path:
    import transformers

    config_name, model_name, options = KINDS[kind]
    tokenizer = build_tokenizer(folder, chat=True)
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=INIT, tie_word_embeddings=False, **options)
    torch.manual_seed(0)
    getattr(transformers, model_name)(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(KINDS))
def kind_model(request, tmp_path_factory):
    folder = make_model(tmp_path_factory.mktemp(request.param), request.param)
    model, tokenizer, _ = load_causal_lm(str(folder), dtype="float32")
    return request.param, model, tokenizer


def plain_logp(model, prompt: list[int], response: list[int], skip: int) -> float:
    """Sum of log p(response token | all before it): one unpadded forward of prompt + response, no cache."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response]), use_cache=False).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[len(prompt) + t - 1, response[t]].item() for t in range(skip, len(response)))


def short_pairs(n: int) -> list[dict]:
    """Pairs 2k and 2k+1 share a prompt; prompts differ in length from one k to the next (33 to 105
    tokens), responses have 1 to 35: log-prob sums of a few hundred nats, so float32 rounding stays far
    below the tolerance."""
    lines = corpus()
    out = []
    for i in range(n):
        k = i // 2
        prompt = [{"role": "user", "content": " ".join(lines[7 * k + j] for j in range(1 + k % 3))}]
        if k % 2:
            prompt = [{"role": "system", "content": "Be brief."}, *prompt]
        rejected = "" if i == 0 else lines[13 * i + 1][: 12 + 9 * i]  # an empty one still scores its EOS
        out.append({"prompt": prompt, "chosen": lines[11 * i + 5], "rejected": rejected})
    return out


def _args(data):
    return [d["prompt"] for d in data], [d["chosen"] for d in data], [d["rejected"] for d in data]


def cpu_layouts(model, tokenizer) -> dict[str, ImplicitScorer]:
    """The scorer's CPU layouts, each sized so a test's pairs fit one batch: per-pair, padded shared prompt, and
    the default (the tree where it is exact, else the padded path)."""
    return {
        "per-pair": ImplicitScorer(model, tokenizer, tree=False),
        "padded shared prompt": ImplicitScorer(model, tokenizer, tree=False, max_pairs=256, token_budget=100000),
        "cpu default": ImplicitScorer(model, tokenizer, token_budget=100000),
    }


def test_every_layout_equals_the_plain_forward(kind_model):
    kind, model, tokenizer = kind_model
    data = short_pairs(8)
    probe = ImplicitScorer(model, tokenizer, tree=False)
    pairs = probe.tokenize(*_args(data))
    # Equal prompts make batches even where prompt lengths must not mix; prompts are longer than the window.
    assert len({len(p.prompt) for p in pairs}) == 4 and min(len(p.prompt) for p in pairs) > 3 * WINDOW
    assert max(len(p.chosen) for p in pairs) > 2 * WINDOW
    expected = [(plain_logp(model, p.prompt, p.chosen, p.chosen_skip),
                 plain_logp(model, p.prompt, p.rejected, p.rejected_skip)) for p in pairs]

    layouts = cpu_layouts(model, tokenizer)
    assert len(layouts["padded shared prompt"].plan(pairs)) == 1  # one batch of prompts of different lengths
    assert layouts["cpu default"].tree == (kind in MASK_DRIVEN_OK)
    assert supports_tree(model) == (kind in MASK_DRIVEN_OK)
    if kind in MASK_DRIVEN_OK:
        assert packing.supports_packing(model) is None
        layouts["packed"] = ImplicitScorer(model, tokenizer, packing=True, token_budget=100000)
    else:
        assert packing.supports_packing(model)  # refused, so CUDA's default picks the padded layout instead
        with pytest.raises(MarginLensError, match="packing is not supported for this model"):
            ImplicitScorer(model, tokenizer, packing=True)

    for name, scorer in layouts.items():
        got = scorer.score(*_args(data))
        for p, g, (chosen, rejected) in zip(pairs, got, expected, strict=True):
            assert (g.chosen_ntok, g.rejected_ntok) == (len(p.chosen) - p.chosen_skip,
                                                        len(p.rejected) - p.rejected_skip)
            assert g.chosen_logp == pytest.approx(chosen, abs=TOLERANCE), f"{kind}, {name}: chosen"
            assert g.rejected_logp == pytest.approx(rejected, abs=TOLERANCE), f"{kind}, {name}: rejected"


def test_the_decision_names_what_each_kind_does(kind_model):
    kind, model, _ = kind_model
    reason = model_masking.mask_driven_refusal(model)
    if kind in MASK_DRIVEN_OK:
        assert reason is None
    elif kind.endswith("alibi"):
        assert reason is not None and "ALiBi" in reason
    else:
        assert reason is not None and "sliding" in reason
    # Bloom's and Falcon's ALiBi count the tokens the 2-D mask keeps; MPT's counts slots, so does a window
    # narrower than the padded row (one within the window never drops a token).
    assert model_masking.prompt_padding_exact(model, 10**6) == (kind not in SLOT_COUNTING)
    assert model_masking.prompt_padding_exact(model, WINDOW) == (kind != "mpt-alibi")
