"""The default policy, SmolLM2-135M-Instruct, offline: GGUF -> cached safetensors folder -> scores."""

from __future__ import annotations

import time

import pytest
from marginlens.core.scoring.logprobs import ImplicitScorer
from marginlens.core.scoring.models import (
    DEFAULT_POLICY,
    SMOLLM2_FOLDER,
    load_causal_lm,
    model_fingerprint,
    resolve_model,
)
from marginlens.core.selection.margins import simpo_margin
from tiny_models import REPO_MODEL_CACHE, single_thread, smollm2  # noqa: F401

single_thread()


def test_default_policy_offline_scores_sensibly(smollm2):  # noqa: F811
    assert smollm2 == REPO_MODEL_CACHE / SMOLLM2_FOLDER and (smollm2 / "model.safetensors").is_file()
    source = resolve_model(None)  # the default, offline (the suite runs with HF_HUB_OFFLINE=1)
    assert source.path == str(smollm2) and source.spec == DEFAULT_POLICY
    assert model_fingerprint(source) == model_fingerprint(source)  # stable across calls
    start = time.monotonic()
    model, tokenizer, _ = load_causal_lm(DEFAULT_POLICY)
    assert time.monotonic() - start < 30  # the cached folder, not a fresh 35 s dequantisation
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert len(tokenizer) == 49152 and tokenizer.chat_template
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    right, wrong = ImplicitScorer(model, tokenizer).score(
        [prompt, prompt], ["The capital of France is Paris.", "Berlin."], ["The capital of France is Berlin.", "Paris."])
    # The known sanity check for this model: "...Paris." about -2.6, "...Berlin." about -12.1 (summed log-prob).
    assert -4.5 < right.chosen_logp < -1.5 and -14.5 < right.rejected_logp < -10.0
    assert right.chosen_ntok == right.rejected_ntok == 8  # 7 content tokens + <|im_end|>
    assert simpo_margin(right.chosen_logp, right.chosen_ntok, right.rejected_logp, right.rejected_ntok) > 1.0
    assert wrong.rejected_logp > wrong.chosen_logp  # "Paris." beats "Berlin." whichever side it is on
