"""LLM-judge agreement audit (DESIGN.md section 1): does a strong judge agree with the dataset's labels,
per selection subset? Subsets, sampling, the job spec and cost, the "audit" job, and its reports.

Flow (the dashboard's Audit page and `marginlens audit` both follow it):
  subsets = build_subsets(ws, dataset)              {"map": [pair_id, ...], "explicit": ..., ...}
  samples = sample_subsets(subsets, n, seed)        n seeded pair ids per subset
  params  = audit_params(dataset, samples, Endpoint(...), max_calls=..., ...)
  estimate_cost(ws, params)                         calls / tokens still to pay, before starting
  job = submit_audit(ws, params, api_key)           a background job (core.jobs kind "audit")
  audit_report(ws, params)                          statistics per subset, at any time (partial too)
  core.audit.agreement_chart.agreement_figure(report)        the paper-style bar chart with Wilson intervals
  flag_disagreements(ws, dataset, judge_model)      flag pairs the judge decisively reverses (core.data.flags)

The job params hold the sampled ids themselves, so a job is exactly reproducible and resubmitting the
same settings resumes the same job; the verdict store (core.audit.verdicts) is shared by all audits of a
dataset, so a pair judged once by a judge model under a prompt version is never paid for again.
The statistics are defined in core.audit.agreement.
"""

from __future__ import annotations

import fcntl
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from marginlens.core.atomic import write_json
from marginlens.core.audit.agreement import subset_stats
from marginlens.core.audit.judge_client import (
    KEY_ENV,
    Budget,
    BudgetExhausted,
    Completion,
    Endpoint,
    JudgeCallError,
    JudgeClient,
    RequestLedger,
    RetryPolicy,
    estimate_tokens,
    public_url,
)
from marginlens.core.audit.judge_prompt import (
    ORDERS,
    PROMPT_VERSION,
    build_messages,
    chosen_position,
    parse_answer,
    template_sha256,
)
from marginlens.core.audit.judge_prompt import template_text as prompt_template_text
from marginlens.core.audit.verdicts import PairVerdict, VerdictStore, pair_verdicts
from marginlens.core.data.flags import flag_pairs, load_flags
from marginlens.core.errors import MarginLensError
from marginlens.core.jobs import Job, JobContext, list_jobs, submit
from marginlens.core.workspace import Workspace

SUBSETS = ("map", "explicit", "implicit", "random")
DEFAULT_N = 50
DEFAULT_SEED = 42
DEFAULT_CONCURRENCY = 4
FATAL_STATUSES = (401, 403, 404)  # bad key, no access, unknown model: every further call would fail too


# ------------------------------------------------------------------------------------------------
# Subsets and samples
# ------------------------------------------------------------------------------------------------
def build_subsets(
    ws: Workspace,
    dataset: str,
    metrics: tuple[str, ...] = SUBSETS,
    ratio: float | None = None,
    weight: float | None = None,
    seed: int | None = None,
    policy_fp: str | None = None,
    reward_fp: str | None = None,
) -> dict[str, list[str]]:
    """The top-k pair ids of each metric (core.selection.select), score tables defaulting as in the explorer.

    Metrics whose margins the dataset lacks raise MarginLensError naming what to score first.
    """
    from marginlens.core.selection.margins import default_scorers, load_margins
    from marginlens.core.selection.metrics import DEFAULT_SEED as METRIC_SEED
    from marginlens.core.selection.metrics import DEFAULT_WEIGHT
    from marginlens.core.selection.select import SelectionSpec, select

    defaults = default_scorers(ws, dataset)
    margins = load_margins(ws, dataset, policy_fp=policy_fp or defaults["policy"],
                           reward_fp=reward_fp or defaults["reward"])
    subsets = {}
    for metric in metrics:
        spec = SelectionSpec(metric=metric, ratio=ratio,
                             weight=DEFAULT_WEIGHT if weight is None else weight,
                             seed=METRIC_SEED if seed is None else seed)
        subsets[metric] = select(margins, spec).pair_ids
    return subsets


def sample_subsets(subsets: dict[str, list[str]], n: int, seed: int = DEFAULT_SEED) -> dict[str, list[str]]:
    """n pair ids drawn without replacement from each subset (all of it when smaller), seeded per name
    so that adding a subset does not change the others' samples."""
    if n < 1:
        raise MarginLensError(f"the audit sample size must be at least 1, got {n}")
    samples = {}
    for name, ids in subsets.items():
        ids = list(dict.fromkeys(ids))
        rng = random.Random(f"{seed}:{name}")
        samples[name] = ids if len(ids) <= n else rng.sample(ids, n)
    return samples


def ordered(samples: dict[str, Any]) -> dict[str, Any]:
    """Subsets in the paper's order (map, explicit, implicit, random, then any others by name): job
    specs and results are stored as JSON with sorted keys, so the order they were given in is lost."""
    rank = {name: i for i, name in enumerate(SUBSETS)}
    return {name: samples[name] for name in sorted(samples, key=lambda n: (rank.get(n, len(rank)), n))}


def unique_pairs(samples: dict[str, list[str]]) -> list[str]:
    """Every sampled pair once, in first-seen order (a pair in several subsets is judged once)."""
    return list(dict.fromkeys(pid for ids in samples.values() for pid in ids))


# ------------------------------------------------------------------------------------------------
# Job spec, cost estimate, submission
# ------------------------------------------------------------------------------------------------
def audit_params(
    dataset: str,
    samples: dict[str, list[str]],
    endpoint: Endpoint,
    max_calls: int | None = None,
    max_tokens: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    retry: RetryPolicy | None = None,
    prompt_version: str = PROMPT_VERSION,
) -> dict[str, Any]:
    """The job spec of an audit. Holds no key (the key travels in the worker's environment only)."""
    if prompt_version != PROMPT_VERSION:
        raise MarginLensError(f"prompt version {prompt_version!r} is not available (current: {PROMPT_VERSION})")
    if concurrency < 1:
        raise MarginLensError(f"concurrency must be at least 1, got {concurrency}")
    if not endpoint.model:
        raise MarginLensError("the judge model name is empty")
    if endpoint.base_url and public_url(endpoint.base_url) != endpoint.base_url:
        raise MarginLensError("put the API key in OPENAI_API_KEY, not in the base URL (it would be stored)")
    if not unique_pairs(samples):
        raise MarginLensError("nothing to audit: every subset is empty")
    return {
        "dataset": dataset,
        "samples": {name: list(ids) for name, ids in samples.items()},
        "endpoint": asdict(endpoint),
        "max_calls": max_calls,
        "max_tokens": max_tokens,
        "concurrency": int(concurrency),
        "retry": asdict(retry or RetryPolicy()),
        "prompt_version": prompt_version,
    }


def _load_pairs(ws: Workspace, dataset: str, pair_ids: list[str]) -> dict[str, dict[str, Any]]:
    from marginlens.core.selection.margins import pair_texts

    rows = {row["pair_id"]: row for row in pair_texts(ws, dataset, pair_ids)}
    missing = [pid for pid in pair_ids if pid not in rows]
    if missing:
        raise MarginLensError(
            f"dataset {dataset!r} has no pair {missing[0]!r} ({len(missing)} sampled pair ids missing; "
            "was the dataset re-imported? sample again)"
        )
    return rows


def _pending(store: VerdictStore, pair_ids: list[str], model: str, version: str) -> list[tuple[str, str]]:
    done = store.keys()
    return [(pid, order) for pid in pair_ids for order in ORDERS if (pid, model, version, order) not in done]


def estimate_cost(
    ws: Workspace,
    params: dict[str, Any],
    usd_per_million_input: float | None = None,
    usd_per_million_output: float | None = None,
) -> dict[str, Any]:
    """What the audit will still cost: calls not yet in the verdict store and their worst-case tokens
    (input estimated at ~4 characters a token, output at max_output_tokens), in USD when prices are given.
    Retries are not included: they are bounded by max_calls."""
    dataset = params["dataset"]
    endpoint = Endpoint(**params["endpoint"])
    pair_ids = unique_pairs(params["samples"])
    pending = _pending(VerdictStore.for_dataset(ws, dataset), pair_ids, endpoint.model, params["prompt_version"])
    rows = _load_pairs(ws, dataset, list(dict.fromkeys(pid for pid, _ in pending)))
    input_tokens = sum(
        estimate_tokens(build_messages(rows[pid]["prompt"], rows[pid]["chosen"], rows[pid]["rejected"], order))
        for pid, order in pending
    )
    output_tokens = len(pending) * endpoint.max_output_tokens
    estimate: dict[str, Any] = {
        "pairs": len(pair_ids),
        "calls_total": 2 * len(pair_ids),
        "calls_stored": 2 * len(pair_ids) - len(pending),
        "calls": len(pending),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "tokens": input_tokens + output_tokens,
        "max_calls": params.get("max_calls"),
        "max_tokens": params.get("max_tokens"),
        "usd": None,
    }
    if usd_per_million_input is not None and usd_per_million_output is not None:
        estimate["usd"] = (input_tokens * usd_per_million_input + output_tokens * usd_per_million_output) / 1e6
    calls_cap = params.get("max_calls")
    estimate["fits_budget"] = (calls_cap is None or len(pending) <= calls_cap) and (
        params.get("max_tokens") is None or estimate["tokens"] <= params["max_tokens"]
    )
    return estimate


def submit_audit(ws: Workspace, params: dict[str, Any], api_key: str | None = None) -> Job:
    """Start (or resume, or find finished) the audit job. `api_key` reaches only the worker's environment;
    without it the worker uses OPENAI_API_KEY from this process's environment."""
    env = {KEY_ENV: api_key} if api_key else None
    return submit(ws, "audit", params, env=env)


def list_audits(ws: Workspace, dataset: str) -> list[Job]:
    """The audit jobs of a dataset, newest first (the job folders are the only record of them)."""
    return [job for job in list_jobs(ws, "audit") if job.spec.get("params", {}).get("dataset") == dataset]


# ------------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------------
@contextmanager
def _dataset_lock(ws: Workspace, dataset: str, ctx: JobContext) -> Iterator[None]:
    """One judging run per dataset at a time, so that two audits sharing pairs never both pay for one."""
    path = ws.audits_dir / dataset / ".judging.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    ctx.log(f"waiting for another audit of {dataset!r} to finish")
                    ctx.set_state("running", "waiting for another audit of this dataset")
                    waited = True
                ctx.check_cancel()
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


def verdict_record(
    pair_id: str, order: str, completion: Completion, endpoint: Endpoint, prompt_version: str, job_id: str | None
) -> dict[str, Any]:
    """The stored form of one answer: what was asked (prompt text and version), what came back, what it means."""
    if completion.malformed:
        parsed_choice, rationale, reason = None, "", "malformed response body"
    else:
        parsed = parse_answer(completion.text)
        parsed_choice, rationale, reason = parsed.choice, parsed.rationale, parsed.reason
    prefers = None
    if parsed_choice is not None:
        prefers = "chosen" if parsed_choice == chosen_position(order) else "rejected"
    return {
        "pair_id": pair_id,
        "judge_model": endpoint.model,
        "prompt_version": prompt_version,
        "order": order,
        "chosen_position": chosen_position(order),
        "choice": parsed_choice,
        "prefers": prefers,
        "valid": parsed_choice is not None,
        "invalid_reason": reason,
        "rationale": rationale,
        "raw": completion.raw,
        "prompt_text": prompt_template_text(),
        "prompt_sha256": template_sha256(),
        "base_url": public_url(endpoint.base_url),
        "temperature": endpoint.temperature,
        "max_output_tokens": endpoint.max_output_tokens,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "attempts": completion.attempts,
        "job_id": job_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _judge_all(
    ctx: JobContext,
    client: JudgeClient,
    store: VerdictStore,
    rows: dict[str, dict[str, Any]],
    pending: list[tuple[str, str]],
    concurrency: int,
    on_done: Any,
) -> dict[str, Any]:
    """Ask the judge for every pending (pair, order) with `concurrency` threads; store each answer the
    moment it arrives. Stops early on cancel, budget exhaustion or a refusal of the whole endpoint;
    calls already in flight then finish and are stored (they are paid for)."""
    params = ctx.params
    endpoint, version = client.endpoint, params["prompt_version"]
    outcome: dict[str, Any] = {"stored": 0, "invalid": 0, "failed": [], "fatal": None, "budget": None}
    lock = threading.Lock()
    stop = threading.Event()
    queue = iter(pending)

    def worker() -> None:
        while not stop.is_set():
            with lock:
                task = next(queue, None)
            if task is None:
                return
            pid, order = task
            row = rows[pid]
            try:
                completion = client.complete(build_messages(row["prompt"], row["chosen"], row["rejected"], order), stop)
            except BudgetExhausted as exc:
                with lock:
                    outcome["budget"] = outcome["budget"] or str(exc)
                stop.set()
                return
            except JudgeCallError as exc:
                with lock:
                    if stop.is_set() and exc.retryable:
                        return  # cancelled or stopped mid-backoff: the task simply stays pending
                    outcome["failed"].append({"pair_id": pid, "order": order, "error": str(exc)})
                    if exc.status in FATAL_STATUSES:
                        outcome["fatal"] = str(exc)
                        stop.set()
                continue
            record = verdict_record(pid, order, completion, endpoint, version, ctx.job.id)
            wrote = store.append(record)
            with lock:
                if wrote:
                    outcome["stored"] += 1
                    outcome["invalid"] += 0 if record["valid"] else 1
            on_done(outcome)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, max(1, len(pending))))]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        if ctx.cancelled():
            stop.set()
        time.sleep(0.1)
    return outcome


def run(ctx: JobContext) -> dict[str, Any]:
    """The "audit" job kind: judge every pending (pair, order), then report per subset."""
    params = ctx.params
    ws = ctx.workspace
    dataset = params["dataset"]
    endpoint = Endpoint(**params["endpoint"])
    version = params["prompt_version"]
    pair_ids = unique_pairs(params["samples"])
    store = VerdictStore.for_dataset(ws, dataset)
    rows = _load_pairs(ws, dataset, pair_ids)
    ledger = RequestLedger(ctx.results_dir / "requests.log")
    budget = Budget(params.get("max_calls"), params.get("max_tokens"), spent=ledger.spent())
    client = JudgeClient(endpoint, os.environ.get(KEY_ENV), budget=budget,
                         retry=RetryPolicy(**params["retry"]), ledger=ledger)
    total = 2 * len(pair_ids)

    def progress(outcome: dict[str, Any], force: bool = False) -> None:
        done = total - len(_pending(store, pair_ids, endpoint.model, version))
        ctx.progress(done, total, force=force, calls=budget.spent.calls, tokens=budget.spent.tokens,
                     invalid=outcome["invalid"], failed=len(outcome["failed"]), budget_stop=outcome["budget"])

    with _dataset_lock(ws, dataset, ctx):
        ctx.set_state("running", "judging")
        pending = _pending(store, pair_ids, endpoint.model, version)
        ctx.log(f"{len(pair_ids)} pairs, {len(pending)} of {total} judgments to request "
                f"(judge {endpoint.model}, prompt {version}, {budget.spent.calls} requests spent earlier)")
        outcome = _judge_all(ctx, client, store, rows, pending, int(params["concurrency"]), progress)
        progress(outcome, force=True)

    ctx.check_cancel()
    report = audit_report(ws, params)
    result = {
        "report": report,
        "requests": budget.spent.calls,
        "tokens": budget.spent.tokens,
        "stored_now": outcome["stored"],
        "invalid_now": outcome["invalid"],
        "failed": outcome["failed"],
        "budget_stop": outcome["budget"],
        "complete": report["overall"]["pending"] == 0,
    }
    write_json(ctx.results_dir / "report.json", result)
    if outcome["fatal"]:
        raise MarginLensError(f"judge endpoint refused the audit: {outcome['fatal']}")
    if outcome["failed"] and not outcome["budget"]:
        first = outcome["failed"][0]
        raise MarginLensError(
            f"{len(outcome['failed'])} judge calls failed after retries (first: pair {first['pair_id']} "
            f"order {first['order']}: {first['error']}); resubmit the audit to retry only those"
        )
    if outcome["budget"]:
        ctx.log(f"stopped: {outcome['budget']}; {report['overall']['pending']} pairs still pending")
    return result


# ------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------
def load_pair_verdicts(ws: Workspace, dataset: str, judge_model: str,
                       prompt_version: str = PROMPT_VERSION) -> dict[str, PairVerdict]:
    return pair_verdicts(VerdictStore.for_dataset(ws, dataset).records(), judge_model, prompt_version)


def verdicts_for_pair(ws: Workspace, dataset: str, pair_id: str) -> list[dict[str, Any]]:
    """Every stored answer about one pair (all judges, prompt versions and orders), for the pair viewer."""
    records = [r for r in VerdictStore.for_dataset(ws, dataset).records() if r["pair_id"] == pair_id]
    return sorted(records, key=lambda r: (r["judge_model"], r["prompt_version"], r["order"]))


def audit_report(ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
    """Statistics per subset (and over all sampled pairs) from whatever the store holds now."""
    model = params["endpoint"]["model"]
    verdicts = load_pair_verdicts(ws, params["dataset"], model, params["prompt_version"])
    subsets = {name: subset_stats(ids, verdicts) for name, ids in ordered(params["samples"]).items()}
    return {
        "dataset": params["dataset"],
        "judge_model": model,
        "prompt_version": params["prompt_version"],
        "subsets": subsets,
        "overall": subset_stats(unique_pairs(params["samples"]), verdicts),
    }


def verdict_rows(ws: Workspace, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sampled pair: its subsets, both answers and rationales, agreement, and its flag."""
    verdicts = load_pair_verdicts(ws, params["dataset"], params["endpoint"]["model"], params["prompt_version"])
    flags = load_flags(ws, params["dataset"])
    membership: dict[str, list[str]] = {}
    for name, ids in ordered(params["samples"]).items():
        for pid in ids:
            membership.setdefault(pid, []).append(name)
    rows = []
    for pid, names in membership.items():
        verdict = verdicts.get(pid) or PairVerdict(pid, None, None)
        flag = flags.get(pid)
        rows.append({**verdict.to_row(), "subsets": names, "flag_action": flag["action"] if flag else None})
    return rows


# ------------------------------------------------------------------------------------------------
# Acting on verdicts: flag the pairs the judge reverses
# ------------------------------------------------------------------------------------------------
def disagreements(ws: Workspace, dataset: str, judge_model: str, prompt_version: str = PROMPT_VERSION,
                  pair_ids: list[str] | None = None) -> list[str]:
    """Pairs whose judge verdict is decisive (both orders agree) and prefers the rejected response."""
    verdicts = load_pair_verdicts(ws, dataset, judge_model, prompt_version)
    wanted = verdicts if pair_ids is None else {p: verdicts[p] for p in pair_ids if p in verdicts}
    return [pid for pid, v in wanted.items() if v.agrees is False]


def flag_disagreements(ws: Workspace, dataset: str, judge_model: str, action: str = "exclude",
                       prompt_version: str = PROMPT_VERSION, pair_ids: list[str] | None = None) -> list[str]:
    """Flag every pair the judge decisively prefers the other way; returns the pair ids flagged."""
    ids = disagreements(ws, dataset, judge_model, prompt_version, pair_ids)
    if ids:
        flag_pairs(ws, dataset, ids, action=action,
                   reason=f"judge {judge_model} ({prompt_version}) prefers the rejected response in both orders",
                   judge_model=judge_model)
    return ids
