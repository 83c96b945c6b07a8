"""The "evaluate" job: generate on an eval set, score each response, append per-prompt results.

  job = submit_evaluation(ws, model, eval_set, parse_eval("verifier:answer-match"))
  job.wait(); evaluation_summary(job)          # EvalSummary: n, mean, per-prompt scores, invalid, ...

The job id hashes the model's identity (weights and tokenizer), the eval set's content fingerprint, the
evaluator with the version of its rule (verifier, rating rubric or judge prompt) and, for the judge, the
starting model's identity: the same inputs give the same job, a retrained folder at the same path or a
changed rule a new one. Results folder:
  evaluations.jsonl   one record per prompt id, appended as it is scored (core.keyed_log), so a killed
                      job resumed by resubmitting scores only what is missing
Responses come from the generation cache (core.experiments.generation), so a resume regenerates nothing
stored. The summary is always recomputed from the stored per-prompt records.

Secrets (a judge's or rater's API key) reach the worker only through `env`, never the params.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.evaluators import EvalSpec, evaluator_versions, make_evaluator, parse_eval
from marginlens.core.experiments.generation import GenerationParams, generate_responses
from marginlens.core.job_status import JobState
from marginlens.core.jobs import Job, JobContext, submit
from marginlens.core.keyed_log import KeyedLog
from marginlens.core.workspace import Workspace

__all__ = ["EvalSpec", "EvalSummary", "evaluation_cost", "evaluation_params", "evaluation_summary", "parse_eval",
           "run", "submit_evaluation"]

KIND = "evaluate"
RESULTS_FILE = "evaluations.jsonl"
CHUNK = 8  # prompts scored between two appends: a kill loses at most this much scoring


@dataclass
class EvalSummary:
    model: str
    evaluator: str  # the EvalSpec's label, e.g. "verifier:answer-match"
    n: int  # prompts with a valid score
    mean: float | None  # over the valid scores; for the judge, the win rate (wins + ties/2) / n
    scores: list[float | None] = field(default_factory=list)  # per prompt, eval-set order; None where invalid
    invalid: int = 0  # prompts without a valid score (an unparseable judge answer or rating)
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None
    ids: list[str] = field(default_factory=list)  # the prompt ids, aligned with `scores`
    truncated: int = 0  # responses cut by max_new_tokens without an end-of-sequence token

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluation_params(model: str, eval_set: Path, spec: EvalSpec, *, baseline_model: str | None = None,
                      device: str | None = None) -> dict[str, Any]:
    """The evaluate job's params (its id is their hash): resolved model specs and identities, the eval set's
    path and fingerprint, the evaluator and its rule's versions, the device. Checks everything a worker would fail on later."""
    from marginlens.core.experiments.eval_set import eval_set_fingerprint
    from marginlens.core.experiments.generation import generation_identity
    from marginlens.core.scoring.models import canonical_spec, model_identity, resolve_device

    if spec.kind == "judge" and not baseline_model:
        raise MarginLensError("the pairwise judge compares against the starting model: give baseline_model")
    model = canonical_spec(model)
    path = Path(eval_set).expanduser().resolve()
    device = resolve_device(device or "auto")
    # A GPU generates 64 prompts in about the time of 8 (decoding is bound by memory, not compute); the CPU is
    # not, and there bigger batches only pad more. The batch is in the cache key, so caches never mix them.
    batch = 64 if device.startswith("cuda") else GenerationParams.batch_size
    params: dict[str, Any] = {
        "model": model, "model_identity": generation_identity(model),
        "eval_set": str(path), "eval_set_fingerprint": eval_set_fingerprint(path),
        "eval": spec.to_dict(), "versions": evaluator_versions(spec), "device": device,
        "generation": asdict(GenerationParams(max_new_tokens=spec.max_new_tokens, batch_size=batch)),
    }
    if spec.kind == "judge":
        baseline = canonical_spec(str(baseline_model))
        params.update(baseline_model=baseline, baseline_identity=generation_identity(baseline))
    if spec.kind == "reward":
        params["reward_identity"] = model_identity(canonical_spec(spec.target))
    return params


def submit_evaluation(ws: Workspace, model: str, eval_set: Path, spec: EvalSpec, *, baseline_model: str | None = None,
                      device: str | None = None, env: dict[str, str] | None = None) -> Job:
    """Start (or find running or done, or resume) the evaluation of `model` on `eval_set`. `baseline_model`:
    the starting model, required for the judge and ignored otherwise. `env`: extra worker environment, the
    only way a key travels (e.g. {"OPENAI_API_KEY": key}, or the variable spec.api_key_env names)."""
    params = evaluation_params(model, eval_set, spec, device=device,
                               baseline_model=baseline_model if spec.kind == "judge" else None)
    return submit(ws, KIND, params, env=env)


def _store(job_results: Path) -> KeyedLog:
    return KeyedLog(job_results / RESULTS_FILE, key_of=lambda record: record["id"])


def summarize(records: list[dict[str, Any]], model: str, label: str) -> EvalSummary:
    ordered = sorted(records, key=lambda r: r["index"])
    scores = [r["score"] if r.get("valid") else None for r in ordered]
    valid = [s for s in scores if s is not None]
    summary = EvalSummary(model=model, evaluator=label, n=len(valid), mean=math.fsum(valid) / len(valid) if valid
                          else None, scores=scores, invalid=len(scores) - len(valid),
                          ids=[r["id"] for r in ordered], truncated=sum(bool(r.get("truncated")) for r in ordered))
    if label.startswith("judge:"):
        outcomes = [r.get("outcome") for r in ordered]
        summary.wins, summary.ties, summary.losses = (outcomes.count(o) for o in ("win", "tie", "loss"))
    return summary


def evaluation_summary(job: Job) -> EvalSummary:
    """The summary of a finished evaluation, from its stored per-prompt records."""
    status = job.status()
    if status.state is not JobState.DONE:
        raise MarginLensError(f"evaluation {job.id} is {status.state.value}, not done: no summary yet")
    params = job.spec["params"]
    return summarize(_store(job.results_dir).records(), params["model"], EvalSpec.from_dict(params["eval"]).label)


def evaluation_cost(spec: EvalSpec, n_prompts: int, n_models: int) -> dict[str, int]:
    """Upper bounds for evaluating `n_models` models (the starting model counted among them) on `n_prompts`:
    generations, generated tokens, and judge or rating requests. Cached generations and answers, and a
    response identical to the starting model's (never sent to the judge), make the real cost lower."""
    generations = n_prompts * n_models
    return {"generations": generations, "generated_tokens": generations * spec.max_new_tokens,
            "judge_requests": 2 * generations if spec.kind == "judge" else 0,
            "rating_requests": generations if spec.kind == "rating" else 0}


def run(ctx: JobContext) -> dict[str, Any]:
    """The "evaluate" job kind."""
    from marginlens.core.experiments.eval_set import load_eval_set, rows_fingerprint

    params = ctx.params
    spec = EvalSpec.from_dict(params["eval"])
    ws = ctx.workspace
    eval_set = Path(params["eval_set"])
    rows = load_eval_set(eval_set)
    if rows_fingerprint(rows) != params["eval_set_fingerprint"]:
        raise MarginLensError(f"eval set {eval_set} changed since this evaluation was submitted; submit it again")
    versions = evaluator_versions(spec)
    if versions != params.get("versions"):  # a rule changed between submitting and running (or resuming)
        raise MarginLensError(f"{spec.label}: the rule changed since this evaluation was submitted "
                              f"({params.get('versions')} then, {versions} now); submit it again")
    generation = GenerationParams(**params["generation"])
    judged = spec.kind == "judge"
    n = len(rows)
    total = n * (3 if judged else 2)  # generate (+ the starting model's) + score, one unit per prompt each
    offset = [0]

    def progress(done: int, _total: int) -> None:
        ctx.check_cancel()
        ctx.progress(offset[0] + done, total, phase="generating")

    ctx.log(f"evaluating {params['model']} on {n} prompts of {eval_set} with {spec.label}")
    made = generate_responses(ws, params["model"], eval_set, generation, device=params["device"],
                              progress=progress, check_cancel=ctx.check_cancel, log=ctx.log)
    baselines = None
    if judged:
        offset[0] = n
        baselines = [r["responses"][0] for r in generate_responses(
            ws, params["baseline_model"], eval_set, generation, device=params["device"], progress=progress,
            check_cancel=ctx.check_cancel, log=ctx.log)]
    offset[0] = total - n
    store = _store(ctx.results_dir)
    stored = store.keys()
    pending = [i for i, row in enumerate(rows) if row["id"] not in stored]
    ctx.progress(total - len(pending), total, force=True, phase="scoring", done_before=total - len(pending))
    if pending:
        evaluator = make_evaluator(spec, ws.root, ctx.results_dir, params["device"])
        ctx.set_state(JobState.RUNNING, f"scoring {len(pending)} responses with {spec.label}")
        for start in range(0, len(pending), CHUNK):
            ctx.check_cancel()
            chunk = pending[start:start + CHUNK]
            results = evaluator.evaluate([rows[i] for i in chunk], [made[i]["responses"][0] for i in chunk],
                                         None if baselines is None else [baselines[i] for i in chunk])
            for i, result in zip(chunk, results, strict=True):
                store.append({**result, "id": rows[i]["id"], "index": i, "response": made[i]["responses"][0],
                              "truncated": made[i]["truncated"][0],
                              **({"baseline_response": baselines[i]} if baselines is not None else {})})
            ctx.progress(total - len(pending) + start + len(chunk), total, phase="scoring")
    summary = summarize(store.records(), params["model"], spec.label)
    ctx.progress(total, total, force=True, phase="done")
    ctx.log(f"{spec.label}: mean {summary.mean} over {summary.n} prompts ({summary.invalid} invalid, "
            f"{summary.truncated} truncated)")
    return summary.to_dict()
