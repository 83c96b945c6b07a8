"""Sampling the rollout's n answers per prompt with vLLM: the fast path on a CUDA GPU.

Used by the rollout job only when its backend is "vllm", or "auto" with vllm importable and a CUDA
device; importing this module never imports vllm. It returns the record shape of
core.experiments.generation.generate_responses ({"id", "responses", "truncated", "new_tokens"}), so
everything after sampling is the same on both backends.

Prompts are rendered by the policy's own chat template (core.scoring.tokenization.Renderer, as the
transformers path does) and handed over as token ids, so the template's BOS is not added twice. Each
prompt gets its own seed (the run's seed and the prompt's index in the file): its answers do not depend
on which prompts share a batch, so a resumed run draws the same samples an uninterrupted one would, up to
the low bits batched GPU kernels may change (which can flip a near-tie token). Records
are appended per chunk to a KeyedLog the caller owns (the rollout job's results folder, whose id hashes
the backend): what is stored is never sampled again.

Not run by the test suite (no GPU, no vllm on the CI machines): keep it small, and check it on a GPU.
vLLM reserves GPU memory up to `GPU_MEMORY_UTILIZATION`; the engine is dropped before returning, and the
rollout's implicit-margin step loads the policy again with transformers (whether vLLM's engine process has
released its memory by then has not been checked).
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.generation import GenerationParams, user_messages
from marginlens.core.keyed_log import KeyedLog

CHUNK = 256  # prompts per engine call between two appends: a kill loses at most this much sampling
# A share, not all: the implicit-margin step needs room for the policy after the engine is dropped, and vLLM
# does not always hand its memory back at once.
GPU_MEMORY_UTILIZATION = 0.6


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def prompt_seed(seed: int, index: int) -> int:
    """The seed of the prompt at `index` in the file (the transformers path seeds per chunk the same way)."""
    return (seed * 1_000_003 + index) % (1 << 31)


def sample_responses(store: KeyedLog, policy: str, rows: Sequence[dict[str, Any]], params: GenerationParams, *,
                     dtype: str, progress: Callable[[int, int], None] | None = None,
                     check_cancel: Callable[[], None] | None = None,
                     log: Callable[[str], None] | None = None,
                     system_prompt: str | None = None) -> list[dict[str, Any]]:
    """`params.n` sampled answers for every row (eval-set rows, file order), stored in `store` keyed by id,
    each with its cumulative log-prob and token count as vLLM reports them ("logps", "logp_tokens": the
    reference profile's implicit margin). `system_prompt`: a system turn before each prompt."""
    if not vllm_available():
        raise MarginLensError("backend 'vllm' asked for, but vllm is not installed here (pip install vllm), "
                              "or use backend 'transformers'")
    stored = store.keys()
    pending = [i for i, row in enumerate(rows) if row["id"] not in stored]
    if progress:
        progress(len(rows) - len(pending), len(rows))
    if pending:
        _sample(store, policy, rows, pending, params, dtype, progress, check_cancel, log, system_prompt)
    by_id = {r["id"]: r for r in store.records()}
    return [by_id[r["id"]] for r in rows]


def _sample(store: KeyedLog, policy: str, rows: Sequence[dict[str, Any]], pending: list[int],
            params: GenerationParams, dtype: str, progress: Callable[[int, int], None] | None,
            check_cancel: Callable[[], None] | None, log: Callable[[str], None] | None,
            system_prompt: str | None) -> None:
    import torch
    from marginlens.core.scoring.models import load_tokenizer, resolve_model
    from marginlens.core.scoring.tokenization import Renderer
    from vllm import LLM, SamplingParams

    source = resolve_model(policy)
    tokenizer = load_tokenizer(source)
    renderer = Renderer(tokenizer)
    if log:
        log(f"sampling {len(pending)} of {len(rows)} prompts with vLLM ({policy}, {dtype})")
    engine = LLM(model=source.path, revision=source.revision, dtype=dtype, seed=params.seed,
                 gpu_memory_utilization=GPU_MEMORY_UTILIZATION)
    try:
        done = len(rows) - len(pending)
        for start in range(0, len(pending), CHUNK):
            if check_cancel:
                check_cancel()
            chunk = pending[start:start + CHUNK]
            texts = [renderer.render(user_messages(rows[i], system_prompt), add_generation_prompt=True) for i in chunk]
            prompts = [{"prompt_token_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
            options = [SamplingParams(n=params.n, temperature=params.temperature if params.do_sample else 0.0,
                                      top_p=params.top_p if params.do_sample else 1.0,
                                      max_tokens=params.max_new_tokens, seed=prompt_seed(params.seed, i),
                                      logprobs=0)  # the sampled token's own log-prob, as the reference asks
                       for i in chunk]
            for i, out in zip(chunk, engine.generate(prompts, options, use_tqdm=False), strict=True):
                answers = list(out.outputs)
                store.append({"id": rows[i]["id"], "responses": [a.text for a in answers],
                              "truncated": [a.finish_reason == "length" for a in answers],
                              "new_tokens": [len(a.token_ids) for a in answers],
                              "logps": [a.cumulative_logprob for a in answers],
                              "logp_tokens": [len(a.logprobs or ()) for a in answers]})
            done += len(chunk)
            if progress:
                progress(done, len(rows))
    finally:
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
