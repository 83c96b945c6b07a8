"""The "rollout" job: n sampled answers per pool prompt, annotated, paired best vs worst, with margins.

  job = submit_rollout(ws, policy, pool, parse_eval("verifier:self-consistency"))
  job.wait(); pairs_path(job); rollout_summary(job)

Steps, each stored as it goes so a killed job resumed by resubmitting redoes nothing stored:
  sampling          n answers per prompt from `policy` (core.experiments.generation, the workspace's
                    generation cache; or vLLM on a CUDA GPU, core.selfplay.vllm_sampling, stored in
                    results/samples.jsonl)
  annotating        every answer scored by the annotator (a verifier, a reward model or an LLM rating;
                    the pairwise judge compares two models and is refused), the row it sees carrying
                    "samples", all n answers to its prompt, so a verifier may compare siblings
                    (self-consistency); results/annotations.jsonl, one record per prompt id
  implicit margins  best vs worst under `policy` (core.scoring.logprobs.ImplicitScorer, SimPO form);
                    results/implicit.jsonl, one record per prompt id
Annotation and scoring run over fixed chunks in pool order, and a stored record always stands: a resumed
run computes exactly the numbers of an uninterrupted one. At the end, written atomically from the
stored records: results/pairs.jsonl (pool order), results/unpaired.jsonl (each prompt without a pair and
why), results/summary.json.

The job id hashes the policy's identity, the pool's content fingerprint, the generation params, the
annotator and its rule's versions, the device, dtype and sampling backend. Secrets (a rater's API key)
reach the worker only through `env`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from marginlens.core.atomic import read_json, write_json, write_jsonl
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.evaluators import EvalSpec, evaluator_versions, make_evaluator
from marginlens.core.experiments.generation import GenerationParams, generate_responses, user_messages
from marginlens.core.job_status import JobState
from marginlens.core.jobs import Job, JobContext, submit
from marginlens.core.keyed_log import KeyedLog
from marginlens.core.selfplay.prompt_pool import LINEAGE, load_prompts, pool_fingerprint
from marginlens.core.workspace import Workspace

__all__ = ["BACKENDS", "SAMPLING", "best_and_worst", "pairs_path", "resolve_backend", "rollout_params",
           "rollout_summary", "run", "submit_rollout"]

KIND = "rollout"
SAMPLING = GenerationParams(max_new_tokens=128, do_sample=True, temperature=0.8, top_p=0.95, seed=42, n=5,
                            batch_size=4)
BACKENDS = ("auto", "transformers", "vllm")
ROLLOUT_VERSION = 1  # bump when a change here (pairing, ties, the margin's form) changes a rollout's pairs
ANNOTATE_CHUNK = 8  # prompts annotated between two appends: a kill loses at most this much annotation
MARGIN_CHUNK = 16  # pairs scored per call: fixed slices, so a resumed run batches them as an uninterrupted one
PAIRS_FILE, UNPAIRED_FILE, SUMMARY_FILE = "pairs.jsonl", "unpaired.jsonl", "summary.json"


# ------------------------------------------------------------------------------------------------
# Submitting
# ------------------------------------------------------------------------------------------------
def resolve_backend(backend: str, device: str) -> str:
    """"transformers" or "vllm": "auto" takes vLLM when it is importable and the device is a CUDA GPU."""
    from marginlens.core.selfplay.vllm_sampling import vllm_available

    if backend not in BACKENDS:
        raise MarginLensError(f"unknown sampling backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    if backend == "vllm" and not device.startswith("cuda"):
        raise MarginLensError(f"the vllm backend samples on a CUDA GPU, not on {device!r}")
    if backend == "auto":
        return "vllm" if device.startswith("cuda") and vllm_available() else "transformers"
    return backend


def rollout_params(policy: str, prompts: Path, annotator: EvalSpec, *, params: GenerationParams = SAMPLING,
                   device: str | None = None, dtype: str | None = None, backend: str = "auto",
                   rules: dict[str, Any] | None = None, system_prompt: str | None = None) -> dict[str, Any]:
    """The rollout job's params (its id is their hash). Checks what a worker would fail on later. `rules`: the
    profile's pairing, empty-answer and margin rules (core.selfplay.profiles; None: marginlens's own);
    `system_prompt`: a system turn before each prompt, when sampling and when re-scoring the margin."""
    from marginlens.core.experiments.generation import generation_identity
    from marginlens.core.scoring.models import canonical_spec, dtype_for, model_identity, resolve_device

    if annotator.kind == "judge":
        raise MarginLensError("rollout: the pairwise judge compares two models' answers; annotate each answer "
                              "with a verifier, a reward model or a rating (e.g. verifier:self-consistency)")
    if params.n < 2:
        raise MarginLensError(f"rollout: n = {params.n} answers per prompt cannot make a best-vs-worst pair; "
                              "ask for at least 2")
    if not params.do_sample:
        raise MarginLensError("rollout: greedy decoding gives n identical answers; sample (do_sample=True)")
    device = resolve_device(device or "auto")
    policy = canonical_spec(policy)
    path = Path(prompts).expanduser().resolve()
    out: dict[str, Any] = {
        "version": ROLLOUT_VERSION, "policy": policy, "policy_identity": generation_identity(policy),
        "prompts": str(path), "prompts_fingerprint": pool_fingerprint(load_prompts(path)),
        "generation": asdict(params), "annotator": annotator.to_dict(), "versions": evaluator_versions(annotator),
        "device": device, "dtype": dtype_for(device, dtype), "backend": resolve_backend(backend, device),
    }
    if annotator.kind == "reward":
        out["reward_identity"] = model_identity(canonical_spec(annotator.target))
    # only when set: rollouts submitted before profiles existed keep their ids
    if rules:
        out["rules"] = {k: rules[k] for k in ("pairing", "drop_empty", "margin") if k in rules}
    if system_prompt is not None:
        out["system_prompt"] = system_prompt
    return out


def submit_rollout(ws: Workspace, policy: str, prompts: Path, annotator: EvalSpec, *,
                   params: GenerationParams = SAMPLING, device: str | None = None, dtype: str | None = None,
                   backend: str = "auto", env: dict[str, str] | None = None, rules: dict[str, Any] | None = None,
                   system_prompt: str | None = None) -> Job:
    """Start (or find running or done, or resume) the rollout of `policy` on the pool file `prompts`.
    `env`: extra worker environment, the only way a rater's key travels."""
    return submit(ws, KIND, rollout_params(policy, prompts, annotator, params=params, device=device, dtype=dtype,
                                           backend=backend, rules=rules, system_prompt=system_prompt), env=env)


def pairs_path(job: Job) -> Path:
    return job.results_dir / PAIRS_FILE


def rollout_summary(job: Job) -> dict[str, Any]:
    """{"prompts", "answers", "pairs", "ties", "invalid", "truncated"} of a finished rollout."""
    status = job.status()
    summary = read_json(job.results_dir / SUMMARY_FILE)
    if status.state is not JobState.DONE or summary is None:
        raise MarginLensError(f"rollout {job.id} is {status.state.value}, not done: no summary yet")
    return summary


# ------------------------------------------------------------------------------------------------
# Pairing
# ------------------------------------------------------------------------------------------------
def best_and_worst(rewards: list[float | None], texts: list[str]) -> tuple[int, int] | tuple[str, str]:
    """(best, worst) answer indices: the first index of the highest valid reward and the first of the lowest.
    No pair: ("invalid", why) with fewer than two valid rewards, ("tie", why) when they are all equal or the
    two answers are the same text."""
    valid = [(i, r) for i, r in enumerate(rewards) if r is not None and not math.isnan(r)]
    if len(valid) < 2:
        return "invalid", f"{len(valid)} valid reward(s) of {len(rewards)}"
    high, low = max(r for _, r in valid), min(r for _, r in valid)
    if high == low:
        return "tie", f"every valid reward is {high}"
    best = next(i for i, r in valid if r == high)
    worst = next(i for i, r in valid if r == low)
    if texts[best] == texts[worst]:
        return "tie", f"answers {best} and {worst} are the same text with different rewards"
    return best, worst


def _pick(rules: dict[str, Any], scores: list[float | None], texts: list[str], new_tokens: list[int] | None
          ) -> tuple[int, int] | tuple[str, str]:
    """The profile's pair of one prompt's answers: the reference drops a prompt with an empty answer outright
    and keeps ties (core.selfplay.profiles); no rules: best_and_worst."""
    from marginlens.core.selfplay.profiles import best_and_worst_argsort, empty_answer

    if rules.get("drop_empty"):
        empty = empty_answer(texts, new_tokens)
        if empty is not None:
            return "empty", f"answer {empty} is empty: the prompt is dropped with all its answers"
    if rules.get("pairing") == "argsort":
        return best_and_worst_argsort(scores)
    return best_and_worst(scores, texts)


def _sampled_margins(rows: list[dict[str, Any]], made: list[dict[str, Any]], picks: dict[int, tuple[int, int]]
                     ) -> dict[str, dict[str, Any]]:
    """The pairs' log-probs as the sampler reported them (vLLM: the cumulative log-prob and the token count of
    each answer): the reference's implicit margin, with no second pass over the policy."""
    out = {}
    for i, (best, worst) in picks.items():
        logps, ntoks = made[i].get("logps"), made[i].get("logp_tokens")
        if logps is None or ntoks is None:
            raise MarginLensError(f"rollout: the stored samples of prompt {rows[i]['id']!r} carry no log-probs; "
                                  "delete the job folder and submit it again")
        out[rows[i]["id"]] = {"chosen_logp": logps[best], "chosen_ntok": ntoks[best], "rejected_logp": logps[worst],
                              "rejected_ntok": ntoks[worst]}
    return out


# ------------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------------
def _store(results: Path, name: str) -> KeyedLog:
    return KeyedLog(results / name, key_of=lambda record: record["id"])


def _sample(ctx: JobContext, rows: list[dict[str, Any]], generation: GenerationParams, progress: Any
            ) -> list[dict[str, Any]]:
    params = ctx.params
    if params["backend"] == "vllm":
        from marginlens.core.selfplay.vllm_sampling import sample_responses

        return sample_responses(_store(ctx.results_dir, "samples.jsonl"), params["policy"], rows, generation,
                                dtype=params["dtype"], progress=progress, check_cancel=ctx.check_cancel,
                                log=ctx.log, system_prompt=params.get("system_prompt"))
    return generate_responses(ctx.workspace, params["policy"], Path(params["prompts"]), generation,
                              device=params["device"], dtype=params["dtype"], progress=progress,
                              check_cancel=ctx.check_cancel, log=ctx.log, system_prompt=params.get("system_prompt"))


def _annotate(ctx: JobContext, spec: EvalSpec, rows: list[dict[str, Any]], made: list[dict[str, Any]],
              total: int) -> dict[str, dict[str, Any]]:
    """One record per prompt id: {"id", "scores": [float | None] * n} (None where the annotation is invalid)."""
    store = _store(ctx.results_dir, "annotations.jsonl")
    n = len(rows)
    chunks = [list(range(i, min(i + ANNOTATE_CHUNK, n))) for i in range(0, n, ANNOTATE_CHUNK)]
    stored = store.keys()
    pending = [c for c in chunks if any(rows[i]["id"] not in stored for i in c)]
    done = n - sum(len(c) for c in pending)
    ctx.progress(n + done, total, force=True, step="annotating", done_before=n + done)
    if pending:
        evaluator = make_evaluator(spec, ctx.workspace.root, ctx.results_dir, ctx.params["device"])
        ctx.log(f"annotating {n - done} of {n} prompts ({len(made[0]['responses'])} answers each) with {spec.label}")
    for chunk in pending:
        ctx.check_cancel()
        # one evaluator row per answer, each with its own id (a rater keys its requests by it) and its siblings
        flat = [({**rows[i], "id": f"{rows[i]['id']}#{j}", "samples": list(made[i]["responses"])}, answer)
                for i in chunk for j, answer in enumerate(made[i]["responses"])]
        results = evaluator.evaluate([row for row, _ in flat], [answer for _, answer in flat])
        position = 0
        for i in chunk:
            scores: list[float | None] = []
            for result in results[position:position + len(made[i]["responses"])]:
                score = result.get("score")
                scores.append(float(score) if result.get("valid") and score is not None
                              and not math.isnan(score) else None)
            position += len(made[i]["responses"])
            store.append({"id": rows[i]["id"], "scores": scores})
        done += len(chunk)
        ctx.progress(n + done, total, step="annotating")
    return {r["id"]: r for r in store.records()}


def _margins(ctx: JobContext, rows: list[dict[str, Any]], pairs: list[tuple[int, str, str]], total: int
             ) -> dict[str, dict[str, Any]]:
    """Summed log-probs of chosen and rejected under the policy, one record per paired prompt id."""
    store = _store(ctx.results_dir, "implicit.jsonl")
    n = len(rows)
    chunks = [pairs[i:i + MARGIN_CHUNK] for i in range(0, len(pairs), MARGIN_CHUNK)]
    stored = store.keys()
    pending = [c for c in chunks if any(rows[i]["id"] not in stored for i, _, _ in c)]
    done = 2 * n + n - sum(len(c) for c in pending)
    ctx.progress(done, total, force=True, step="implicit margins", done_before=done)
    if pending:
        from marginlens.core.scoring.logprobs import ImplicitScorer
        from marginlens.core.scoring.models import load_causal_lm

        model, tokenizer, _ = load_causal_lm(ctx.params["policy"], device=ctx.params["device"],
                                             dtype=ctx.params["dtype"])
        scorer = ImplicitScorer(model, tokenizer)
        ctx.log(f"implicit margins of {sum(len(c) for c in pending)} of {len(pairs)} pairs under the policy")
        ctx.restart_rate()
        for chunk in pending:
            ctx.check_cancel()
            system = ctx.params.get("system_prompt")
            scored = scorer.score([user_messages(rows[i], system) for i, _, _ in chunk], [c for _, c, _ in chunk],
                                  [r for _, _, r in chunk])
            for (i, _, _), result in zip(chunk, scored, strict=True):
                store.append({"id": rows[i]["id"], **asdict(result)})
            done += len(chunk)
            ctx.progress(done, total, step="implicit margins")
    return {r["id"]: r for r in store.records()}


def run(ctx: JobContext) -> dict[str, Any]:
    """The "rollout" job kind."""
    from marginlens.core.selection.margins import simpo_margin

    params = ctx.params
    spec = EvalSpec.from_dict(params["annotator"])
    rows = load_prompts(Path(params["prompts"]))
    if pool_fingerprint(rows) != params["prompts_fingerprint"]:
        raise MarginLensError(f"prompt pool {params['prompts']} changed since this rollout was submitted; "
                              "submit it again")
    versions = evaluator_versions(spec)
    if versions != params.get("versions"):
        raise MarginLensError(f"{spec.label}: the rule changed since this rollout was submitted "
                              f"({params.get('versions')} then, {versions} now); submit it again")
    generation = GenerationParams(**params["generation"])
    n = len(rows)
    total = 3 * n  # one unit per prompt for each of the three steps

    def sampled(done: int, _total: int) -> None:
        ctx.check_cancel()
        ctx.progress(done, total, step="sampling")

    ctx.log(f"rollout of {params['policy']} on {n} prompts of {params['prompts']}: {generation.n} answers each "
            f"({params['backend']}), annotated with {spec.label}")
    made = _sample(ctx, rows, generation, sampled)
    annotations = _annotate(ctx, spec, rows, made, total)
    pairs: list[tuple[int, str, str]] = []
    unpaired: list[dict[str, Any]] = []
    picks: dict[int, tuple[int, int]] = {}
    rules = params.get("rules") or {}
    for i, row in enumerate(rows):
        texts, scores = made[i]["responses"], annotations[row["id"]]["scores"]
        pick = _pick(rules, scores, texts, made[i].get("new_tokens"))
        if isinstance(pick[0], str):
            unpaired.append({"id": row["id"], "reason": pick[0], "detail": pick[1], "rewards": scores,
                             "responses": texts})
            continue
        best, worst = int(pick[0]), int(pick[1])
        picks[i] = (best, worst)
        pairs.append((i, texts[best], texts[worst]))
    sampled = rules.get("margin") == "sampled" and params["backend"] == "vllm"
    margins = _sampled_margins(rows, made, picks) if sampled else _margins(ctx, rows, pairs, total)
    out = []
    for i, chosen, rejected in pairs:
        row, (best, worst) = rows[i], picks[i]
        scores, logps = annotations[row["id"]]["scores"], margins[row["id"]]
        m_im = float(simpo_margin(logps["chosen_logp"], logps["chosen_ntok"], logps["rejected_logp"],
                                  logps["rejected_ntok"]))
        out.append({"id": row["id"], "prompt": row["prompt"], "chosen": chosen, "rejected": rejected,
                    "score_chosen": scores[best], "score_rejected": scores[worst],
                    "m_ex": scores[best] - scores[worst],
                    **{k: logps[k] for k in ("chosen_logp", "chosen_ntok", "rejected_logp", "rejected_ntok")},
                    "m_im": None if math.isnan(m_im) else m_im, "rewards": scores,
                    **{k: row[k] for k in LINEAGE}, **{k: row[k] for k in ("answer", "task") if k in row}})
    write_jsonl(ctx.results_dir / PAIRS_FILE, out)
    write_jsonl(ctx.results_dir / UNPAIRED_FILE, unpaired)
    summary = {"prompts": n, "answers": sum(len(m["responses"]) for m in made), "pairs": len(out),
               "ties": sum(u["reason"] == "tie" for u in unpaired),
               "invalid": sum(u["reason"] == "invalid" for u in unpaired),
               "truncated": sum(sum(bool(t) for t in m["truncated"]) for m in made)}
    if rules:
        summary.update(empty=sum(u["reason"] == "empty" for u in unpaired),
                       tied_pairs=sum(p["m_ex"] == 0 for p in out), margin="sampled" if sampled else "policy")
    write_json(ctx.results_dir / SUMMARY_FILE, summary)
    ctx.progress(total, total, force=True, step="done")
    ctx.log(f"{summary['pairs']} pairs from {n} prompts ({summary['ties']} ties, {summary['invalid']} invalid, "
            f"{summary['truncated']} answers truncated)")
    return summary
