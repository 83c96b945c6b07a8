"""The Score page's logic: a ScoreSpec from form values, submit, the dataset's jobs and table rows.

Reads job folders only (core.jobs), so a refresh or a second tab shows the same running job and
submitting the same spec twice joins it (core.jobs ids are hashes of the spec).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, MutableMapping
from typing import Any

from marginlens.app import llm_endpoints, ray_fields
from marginlens.app.access import EndpointChoice
from marginlens.core import jobs
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.models import DEFAULT_POLICY, DTYPES
from marginlens.core.scoring.scorers import explicit_scorers
from marginlens.core.scoring.tokenization import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PROMPT_LENGTH, MODES
from marginlens.core.workspace import Workspace

# "dataset": the scores the dataset was imported with (no scorer); the others are explicit-margin scorers.
DATASET_SOURCE = "dataset"
EXPLICIT_SOURCES = (DATASET_SOURCE, *(s.name for s in explicit_scorers()))
EXPLICIT_LABELS = {DATASET_SOURCE: "dataset scores (as imported)",
                   **{s.name: s.option.label for s in explicit_scorers() if s.option}}
EXPLICIT_VALUE_HELP = "; ".join(f"{s.option.label}: {s.option.hint}" for s in explicit_scorers() if s.option)

ENDPOINT_KEY = "_score_rating"  # the LLM-rating endpoint picker's widgets (access.endpoint_picker)
RATING_SOURCE = "llm_rating"
SOURCE_KEY, SAMPLE_KEY, SEED_KEY = "_score_source", "_score_sample", "_score_seed"  # the Source, Sample, Seed widgets
SOURCE_FOR = "_score_source_dataset"  # the dataset the Source radio's value was chosen for

__all__ = ["DEFAULT_MAX_LENGTH", "DEFAULT_MAX_PROMPT_LENGTH", "DEFAULT_POLICY", "DTYPES", "MODES"]


def default_source(own_scores: bool) -> str:
    """The explicit source the form starts on: the dataset's own scores when it has them, else an LLM rating
    (any OpenAI-compatible endpoint, no GPU needed), never "dataset scores" a dataset does not have."""
    if own_scores:
        return DATASET_SOURCE
    return RATING_SOURCE if RATING_SOURCE in EXPLICIT_SOURCES else next(s for s in EXPLICIT_SOURCES if s != DATASET_SOURCE)


def source_label(source: str, own_scores: bool) -> str:
    if source == DATASET_SOURCE and not own_scores:
        return "none (implicit margin only)"
    return EXPLICIT_LABELS.get(source, source)


def settle_source(state: MutableMapping[str, Any], dataset: str, own_scores: bool,
                  arrival: Mapping[str, Any] | None = None) -> None:
    """Set the Source, Sample and Seed widgets' values before the form draws them: what another page sent
    (navigation.go: e.g. the start page's "rate a sample" step), else the dataset's default source when the
    dataset changed or the widget has no value yet; a source the user picked for this dataset stays."""
    arrival = arrival or {}
    if arrival.get("source") in EXPLICIT_SOURCES:
        state[SOURCE_KEY] = arrival["source"]
    elif state.get(SOURCE_FOR) != dataset or state.get(SOURCE_KEY) not in EXPLICIT_SOURCES:
        state[SOURCE_KEY] = default_source(own_scores)
    state[SOURCE_FOR] = dataset
    if "sample" in arrival:
        state[SAMPLE_KEY] = int(arrival["sample"])
    if "seed" in arrival:
        state[SEED_KEY] = int(arrival["seed"])
    state.setdefault(SEED_KEY, 0)


def build_spec(dataset: str, policy: str, reference: str, source: str, explicit_value: str, device: str,
               max_length: int, max_prompt_length: int, mode: str):
    """A core.scoring.score_spec.ScoreSpec from the form; one-line MarginLensError for inconsistent choices."""
    from marginlens.core.scoring.score_spec import ScoreSpec

    if source not in EXPLICIT_SOURCES:
        raise MarginLensError(f"unknown explicit source {source!r} (expected one of {', '.join(EXPLICIT_SOURCES)})")
    return ScoreSpec(
        dataset=dataset, policy=policy.strip() or None, reference=reference.strip() or None,
        explicit=None if source == DATASET_SOURCE else source, explicit_value=explicit_value.strip() or None,
        device=device, max_length=int(max_length), max_prompt_length=int(max_prompt_length), mode=mode,
    )


DTYPE_HELP = ("what the models run in; auto: bfloat16 on CUDA and on CPUs with native bf16 matrix units (AMX, "
              "AVX512-BF16), else float32. Either way logits become float32 and log-probs are summed in float64; "
              "the dtype is part of each table's fingerprint")


def with_dtype(spec: Any, dtype: str) -> Any:
    """The spec with the models' dtype (auto, float32, bfloat16)."""
    if dtype not in DTYPES:
        raise MarginLensError(f"unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    return dataclasses.replace(spec, dtype=dtype)


def with_sample(spec: Any, sample: int, seed: int) -> Any:
    """The spec scoring a seeded sample of `sample` pairs (0: all of them)."""
    return dataclasses.replace(spec, sample=int(sample) or None, seed=int(seed))


def reward_model_note(dataset: str) -> str:
    from marginlens.core.scoring.rewards import reward_model_note as note

    return note(dataset)


def confined_models(ws: Workspace, policy: str, reference: str, source: str,
                    explicit_value: str) -> tuple[str, str, str]:
    """The form's model texts through access.model_spec: a Hub id as typed, a folder only under a data root or
    the workspace. The explicit value is a model only for a scorer that loads one (the reward model)."""
    from marginlens.app.access import model_spec
    from marginlens.core.scoring.scorers import load_scorers

    policy = model_spec(policy, ws.root, "policy model") if policy.strip() else ""
    reference = model_spec(reference, ws.root, "reference model") if reference.strip() else ""
    scorer = load_scorers().get(source)
    if scorer is not None and getattr(scorer, "needs_device", False) and explicit_value.strip():
        explicit_value = model_spec(explicit_value, ws.root, EXPLICIT_LABELS.get(source, source))
    return policy, reference, explicit_value


def with_rating(spec: Any, endpoint: EndpointChoice | None, max_calls: int) -> Any:
    """The spec with the LLM rater's endpoint (picked, never typed into the spec by hand) and call budget
    (0: none); only for the LLM-rating source."""
    if spec.explicit != "llm_rating":
        return spec
    url = llm_endpoints.chosen_url(endpoint or EndpointChoice(None, None), "LLM rating endpoint")
    options = {"base_url": url, "max_calls": int(max_calls) or None}
    return dataclasses.replace(spec, scorer_options={k: v for k, v in options.items() if v is not None})


def submit(ws: Workspace, spec: Any, endpoint: EndpointChoice | None = None) -> str:
    """Start or join the job for `spec`; a one-line summary of what happened. The picked endpoint's key reaches
    only the worker's environment (core.jobs.submit), never a file, and only for an LLM rating."""
    from marginlens.core.scoring.score_submit import submit_scoring

    env = llm_endpoints.key_env(endpoint) if spec.explicit == "llm_rating" else None
    engine = ray_fields.engine_env(device=spec.device or "auto")  # Ray: app/ray_fields.py
    handle = submit_scoring(ws, spec, env={**(env or {}), **engine} or None)
    cached = ", ".join(handle.cached)
    part = ""
    if handle.targeted is not None and handle.targeted < (handle.total or 0):
        part = f" (a sample of {handle.targeted:,} of {handle.total:,} pairs)"
    if handle.job is None:
        return f"Nothing to compute{part}: every table is already there ({cached})."
    return (f"Scoring job {handle.job.id}{part} is {handle.job.status().state}"
            + (f"; cached: {cached}" if cached else ""))


def rating_url(job: jobs.Job) -> tuple[bool, str | None]:
    """(whether the job rates with an LLM, the rater's base URL as its spec records it)."""
    for task in job.spec.get("params", {}).get("tasks", []):
        if task.get("role") == "llm_rating":
            return True, (task.get("scorer") or {}).get("base_url")
    return False, None


def resume(ws: Workspace, job: jobs.Job, picked: list[EndpointChoice] | None = None) -> jobs.Job:
    """Resume `job` (core.jobs.resume). An LLM-rating job gets the key for the URL its spec asks (the endpoint
    picked for that URL, or the configured one there), never the key of another URL."""
    rates, url = rating_url(job)
    env = llm_endpoints.key_env(llm_endpoints.for_url(url, picked or [])) if rates else None
    return jobs.resume(ws, job, env={**(env or {}), **ray_fields.resume_env(job)} or None)  # on its last engine


def score_jobs(ws: Workspace, dataset: str) -> list[jobs.Job]:
    """The dataset's scoring jobs, newest first."""
    return [job for job in jobs.list_jobs(ws, "score") if job.spec.get("params", {}).get("dataset") == dataset]


def models_label(job: jobs.Job) -> str:
    # A task's JSON (core.scoring.score_spec.Task) has a model for model scorers; a role names any scorer.
    return ", ".join(f"{t['role']}: {t['model']}" if t.get("model") else t["role"]
                     for t in job.spec.get("params", {}).get("tasks", []))


def table_rows(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "fingerprint": m["fingerprint"], "kind": m["kind"], "model": m.get("model"), "rows": m.get("rows"),
        "role": (m.get("spec") or {}).get("role"), "dtype": (m.get("spec") or {}).get("dtype"),
        "truncated": (m.get("spec") or {}).get("truncated_pairs"),
        # "2026-11-29T20:14:05Z" -> "2026-11-29 20:14": the full stamp was cut off in the table
        "created": str(m.get("created") or "")[:16].replace("T", " "),
    } for m in manifests]
