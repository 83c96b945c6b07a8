"""Self-play profiles: whose procedure a run's rounds follow (`marginlens selfplay --profile NAME`).

  reference   the authors' evol_select/ scripts (Hesse73/Alignment-Potential-Metric), the default
  marginlens  this library's own rules, kept for what they guard against (docs/SELFPLAY.md, one table)

A profile resolves, once, when the run is planned, into settings the spec stores: the sampling and evolution
settings it fills in (those the user left unset) and `rules`, what the rollout and the rounds read:
  pairing     "argsort": best = the last index of the highest reward, worst = the first of the lowest (what a
              stable argsort puts at its ends), ties and identical texts kept, their reward margin 0;
              "distinct": the first highest and first lowest, a tie or identical texts give no pair
  drop_empty  a prompt with an empty sampled answer is dropped with all its answers
  train_size  at most this many of a round's rewrite pairs are trained on, a random draw (cap_pairs)
  margin      "sampled": the implicit margin from the sampler's own log-probs per token where the sampler
              reports them (vLLM), else from the policy re-scoring the pair; "policy": always re-scored
An empty `rules` is the marginlens profile: specs planned before profiles existed keep their job ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from marginlens.core.errors import MarginLensError

PROFILES = ("reference", "marginlens")
DEFAULT_PROFILE = "reference"
SYSTEM_PROMPT = "You are a helpful assistant."  # the reference's, for every model but Gemma (no system role)
REFERENCE_MAX_NEW_TOKENS = 4096  # answers and rewrites, on a GPU
CPU_MAX_NEW_TOKENS = 128  # on a CPU: 4096-token answers from even a small model take hours per round
REFERENCE_TRAIN_SIZE = 10_000
TRAIN_DRAW_SEED = 42  # the reference seeds its draw of the rewrite pairs with 42, whatever the run's seed
LENGTH_RATIO = 5.0  # the length filter's factor (the reference's len_diff), when the filter is on

T = TypeVar("T")


def check_profile(name: str) -> str:
    if name not in PROFILES:
        raise MarginLensError(f"unknown self-play profile {name!r} (known: {', '.join(PROFILES)}): "
                              "use --profile reference or --profile marginlens")
    return name


def system_prompt_for(model: str) -> str | None:
    """The reference's system turn for `model`: none for a Gemma model (its template has no system role; the
    reference tests the model's name the same way), SYSTEM_PROMPT for any other."""
    return None if "gemma" in model.lower() else SYSTEM_PROMPT


def reference_settings(policy: str, evolver_model: str, device: str, filter_prompt: bool,
                       train_size: int | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(sampling, evolve, rules) of the reference profile for a resolved device ("cpu", "cuda:0", ...)."""
    tokens = REFERENCE_MAX_NEW_TOKENS if device.startswith("cuda") else CPU_MAX_NEW_TOKENS
    size = REFERENCE_TRAIN_SIZE if train_size is None else int(train_size)
    if size < 1:
        raise MarginLensError(f"--train-size must be at least 1, got {size}")
    sampling = {"n": 5, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": tokens}
    evolve = {"max_new_tokens": tokens, "temperature": 0.8, "top_p": 0.95,
              "max_ratio": LENGTH_RATIO if filter_prompt else None, "system_prompt": system_prompt_for(evolver_model)}
    rules = {"profile": "reference", "pairing": "argsort", "drop_empty": True, "train_size": size,
             "margin": "sampled", "system_prompt": system_prompt_for(policy)}  # the rollouts' system turn
    return sampling, evolve, rules


def best_and_worst_argsort(rewards: Sequence[float | None]) -> tuple[int, int] | tuple[str, str]:
    """The reference's pick: the last index of the highest valid reward and the first of the lowest; equal
    rewards or equal texts still make a pair (its reward margin 0). Fewer than two valid rewards: ("invalid",
    why) -- the reference's reward model always scores, an annotator here may not."""
    valid = [(i, float(r)) for i, r in enumerate(rewards) if r is not None and not math.isnan(r)]
    if len(valid) < 2:
        return "invalid", f"{len(valid)} valid reward(s) of {len(rewards)}"
    high, low = max(r for _, r in valid), min(r for _, r in valid)
    return [i for i, r in valid if r == high][-1], next(i for i, r in valid if r == low)


def empty_answer(texts: Sequence[str], new_tokens: Sequence[int] | None) -> int | None:
    """The index of the first answer with no text or no generated token, None when every answer has some."""
    for i, text in enumerate(texts):
        if text == "" or (new_tokens is not None and i < len(new_tokens) and new_tokens[i] == 0):
            return i
    return None


def cap_pairs(pairs: list[T], train_size: int | None) -> list[T]:
    """At most `train_size` of a round's rewrite pairs, as the reference draws them: all when there are no
    more, else np.random.seed(42) then np.random.choice(N, train_size, replace=False), in the draw's order."""
    if train_size is None or len(pairs) <= train_size:
        return list(pairs)
    picked = np.random.RandomState(TRAIN_DRAW_SEED).choice(len(pairs), train_size, replace=False)
    return [pairs[int(i)] for i in picked]


def with_profile(profile: str, sampling: dict[str, Any], evolve: dict[str, Any], policy: str, evolver_model: str,
                 device: str | None, filter_prompt: bool, train_size: int | None
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(sampling, evolve, rules) of a run: the settings the user gave (None: not given) over the profile's.
    Under the reference, a --max-ratio given turns its length filter on, as --filter-prompt does."""
    from marginlens.core.scoring.models import resolve_device

    sampling = {k: v for k, v in sampling.items() if v is not None}
    evolve = {k: v for k, v in evolve.items() if v is not None}
    if check_profile(profile) == "marginlens":
        if filter_prompt or train_size is not None:
            raise MarginLensError("--filter-prompt and --train-size are options of --profile reference (the "
                                  "marginlens profile always filters by length and trains on every pair)")
        return sampling, evolve, {}
    base_sampling, base_evolve, rules = reference_settings(
        policy, evolver_model, resolve_device(device or "auto"), filter_prompt or "max_ratio" in evolve, train_size)
    return {**base_sampling, **sampling}, {**base_evolve, **evolve}, rules


def profile_of(spec: Any) -> str:
    """A SelfPlaySpec's profile (no rules: marginlens, as every run planned before profiles)."""
    return str(spec.rules.get("profile", "marginlens"))


def plan_line(spec: Any) -> str:
    """The plan's line saying which procedure a SelfPlaySpec follows and where it departs from the authors'."""
    from marginlens.core.scoring.models import resolve_device
    from marginlens.core.selfplay.vllm_sampling import vllm_available

    device = resolve_device(spec.device or "auto")
    # the rollout's own resolution (rollout_job.resolve_backend), without importing the rollout job
    vllm = spec.backend == "vllm" or (spec.backend == "auto" and device.startswith("cuda") and vllm_available())
    sampling_tokens, evolve = spec.sampling_params(0).max_new_tokens, spec.evolve_params(0)
    if profile_of(spec) != "reference":
        return ("profile marginlens: a pair needs two different rewards and texts, a prompt with an empty answer "
                f"is kept, every rewrite pair is trained on, rewrites are kept within {evolve.max_ratio:g}x their "
                "parent's length, the implicit margin is re-scored by the policy (--profile reference runs the "
                "authors' rules)")
    margin = ("from vLLM's sampled log-probs per token" if vllm else
              "re-scored by the policy, per token (only vLLM reports the sampled log-probs)")
    tokens = (f"{sampling_tokens} new tokens for answers and {evolve.max_new_tokens} for rewrites"
              + ("" if device.startswith("cuda") else
                 f" (CPU: the authors' {REFERENCE_MAX_NEW_TOKENS} is the default on a GPU)"))
    system = spec.rules.get("system_prompt")
    return ("profile reference (the authors' evol_select scripts): "
            + (f"system prompt {system!r}" if system else "no system prompt (Gemma)")
            + "; best = last highest reward, worst = first lowest, ties kept with margin 0; a prompt with an "
            f"empty answer dropped; at most {spec.rules.get('train_size'):,} rewrite pairs trained on per round "
            "(random draw); length filter "
            + ("off (--filter-prompt turns it on)" if evolve.max_ratio is None else f"on ({evolve.max_ratio:g}x)")
            + f"; implicit margin {margin}; {tokens}")
