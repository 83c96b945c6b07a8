"""LLM-judge agreement audit (the paper's GPT-4 agreement check): does a strong judge agree with the dataset's labels,
per selection subset? This module is the "audit" job: submitting it and the worker that judges.

Flow (the dashboard's Audit page and `marginlens audit` both follow it):
  subsets = build_subsets(ws, dataset)              core.audit.subsets: {"map": [pair_id, ...], ...}
  samples = sample_subsets(subsets, n, seed)        n seeded pair ids per subset
  params  = audit_params(dataset, samples, Endpoint(...), max_calls=..., ...)   core.audit.audit_params
  estimate_cost(ws, params)                         core.audit.audit_report: calls / tokens still to pay
  job = submit_audit(ws, params, api_key)           a background job (core.jobs kind "audit")
  audit_report(ws, params)                          statistics per subset, at any time (partial too)
  core.audit.agreement_chart.agreement_figure(report)        the paper-style bar chart with Wilson intervals
  flag_disagreements(ws, dataset, judge_model)      flag pairs the judge decisively reverses (core.data.flags)

The job params hold the sampled ids themselves, so a job is exactly reproducible and resubmitting the
same settings resumes the same job; the verdict store (core.verdicts) is shared by all audits of a
dataset, so a pair judged once by a judge model under a prompt version is never paid for again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from marginlens.core.atomic import write_json
from marginlens.core.audit.audit_params import AuditParams, Judgment
from marginlens.core.audit.audit_report import audit_report
from marginlens.core.audit.endpoint_check import check_endpoint
from marginlens.core.audit.judge_prompt import (
    build_messages,
    chosen_position,
    parse_completion,
    template_sha256,
)
from marginlens.core.audit.judge_prompt import template_text as prompt_template_text
from marginlens.core.audit.subsets import sampled_rows
from marginlens.core.chat_client import (
    KEY_ENV,
    Budget,
    BudgetExhausted,
    Completion,
    Endpoint,
    JudgeCallError,
    JudgeClient,
    RequestLedger,
    public_url,
)
from marginlens.core.errors import MarginLensError
from marginlens.core.job_status import JobState
from marginlens.core.jobs import Job, JobContext, list_jobs, submit
from marginlens.core.locks import exclusive
from marginlens.core.verdicts import VerdictStore
from marginlens.core.workspace import Workspace

FATAL_STATUSES = (401, 403, 404)  # bad key, no access, unknown model: every further call would fail too
# This many calls could not reach a working server (connection, timeout, 5xx) before the judge answered any:
# the endpoint is down, not one request unlucky. A request the server turned down on its own (HTTP 400, a
# prompt over the context) says nothing about the endpoint and does not count.
ALL_FAILED_STOP = 3


def _endpoint_down(exc: JudgeCallError) -> bool:
    """Did the call fail for want of a working server (no HTTP status: connection or timeout; or a 5xx)?"""
    return exc.status is None or exc.status >= 500


def submit_audit(ws: Workspace, params: AuditParams, api_key: str | None = None, check: bool = True,
                 on_warning: Callable[[str], None] | None = None) -> Job:
    """Start (or resume, or find finished) the audit job. `api_key` reaches only the worker's environment;
    without it the worker uses OPENAI_API_KEY from this process's environment. `check`: first make sure
    the endpoint answers (reachable, key accepted), refusing with the server's message; what only looks
    wrong (the model not in the server's list) goes to `on_warning` and the audit starts."""
    if check and params.pending(VerdictStore.for_dataset(ws, params.dataset)):
        warning = check_endpoint(params.endpoint, api_key or os.environ.get(KEY_ENV))
        if warning and on_warning is not None:
            on_warning(warning)
    env = {KEY_ENV: api_key} if api_key else None
    return submit(ws, "audit", params.to_dict(), env=env)


class _WatchedClient(JudgeClient):
    """A judge client that also counts retried and failed attempts and keeps the last error, so that the
    job's status shows what the endpoint is doing while calls are still retrying."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retries = 0
        self.errors = 0
        self.last_error: str | None = None
        self._watch = threading.Lock()

    def _attempt(self, messages: list[dict[str, str]], reserved: int, attempt: int) -> Any:
        outcome = super()._attempt(messages, reserved, attempt)
        with self._watch:
            self.retries += attempt > 1
            if outcome.error:
                self.errors += 1
                self.last_error = outcome.error
        return outcome


def list_audits(ws: Workspace, dataset: str) -> list[Job]:
    """The audit jobs of a dataset, newest first (the job folders are the only record of them)."""
    return [job for job in list_jobs(ws, "audit") if job.spec.get("params", {}).get("dataset") == dataset]


@contextmanager
def _dataset_lock(ws: Workspace, dataset: str, ctx: JobContext) -> Iterator[None]:
    """One judging run per dataset at a time, so that two audits sharing pairs never both pay for one."""
    def waiting() -> None:
        ctx.log(f"waiting for another audit of {dataset!r} to finish")
        ctx.set_state(JobState.RUNNING, "waiting for another audit of this dataset")

    with exclusive(ws.audits_dir / dataset / ".judging.lock", on_wait=waiting, check_cancel=ctx.check_cancel):
        yield


def verdict_record(
    pair_id: str, order: str, completion: Completion, endpoint: Endpoint, prompt_version: str, job_id: str | None
) -> dict[str, Any]:
    """The stored form of one answer: what was asked (prompt text and version), what came back, what it means."""
    parsed = parse_completion(completion)
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


@dataclass
class JudgingOutcome:
    """What one judging run did (this run only; the store holds every earlier answer too)."""

    stored: int = 0
    invalid: int = 0
    answered: int = 0  # calls the judge answered (stored or not: another audit may have stored the same first)
    down: int = 0  # failed calls that point at the endpoint itself (_endpoint_down)
    failed: list[dict[str, str]] = field(default_factory=list)  # pair_id, order, error
    fatal: str | None = None  # the endpoint refused the whole audit
    all_failed: str | None = None  # the endpoint looks down (see ALL_FAILED_STOP): the last error
    budget: str | None = None  # why the budget stopped it


def _judge_all(
    ctx: JobContext,
    client: JudgeClient,
    store: VerdictStore,
    rows: dict[str, dict[str, Any]],
    pending: list[Judgment],
    params: AuditParams,
    on_done: Callable[[JudgingOutcome], None],
) -> JudgingOutcome:
    """Ask the judge for every pending (pair, order) with `params.concurrency` threads; store each answer
    the moment it arrives. Stops early on cancel, budget exhaustion or a refusal of the whole endpoint;
    calls already in flight then finish and are stored (they are paid for)."""
    outcome = JudgingOutcome()
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
                    outcome.budget = outcome.budget or str(exc)
                stop.set()
                return
            except JudgeCallError as exc:
                with lock:
                    if stop.is_set() and exc.retryable:
                        return  # cancelled or stopped mid-backoff: the task simply stays pending
                    outcome.failed.append({"pair_id": pid, "order": order, "error": str(exc)})
                    outcome.down += _endpoint_down(exc)
                    if exc.status in FATAL_STATUSES:
                        outcome.fatal = str(exc)
                        stop.set()
                    elif outcome.answered == 0 and outcome.down >= ALL_FAILED_STOP:
                        outcome.all_failed = str(exc)
                        stop.set()
                on_done(outcome)
                continue
            with lock:
                outcome.answered += 1
            record = verdict_record(pid, order, completion, params.endpoint, params.prompt_version, ctx.job.id)
            if params.reask:  # recorded as a re-ask, with what it replaces
                before = store.get((pid, params.judge_model, params.prompt_version, order)) or {}
                record.update(reask=params.reask, replaces={"raw": before.get("raw"),
                                                            "invalid_reason": before.get("invalid_reason")})
            wrote = store.append(record)
            with lock:
                if wrote:
                    outcome.stored += 1
                    outcome.invalid += 0 if record["valid"] else 1
            on_done(outcome)

    n_threads = min(params.concurrency, max(1, len(pending)))
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(n_threads)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        if ctx.cancelled():
            stop.set()
        on_done(outcome)  # throttled by ctx.progress: live request and retry counts while calls retry
        time.sleep(0.1)
    return outcome


def run(ctx: JobContext) -> dict[str, Any]:
    """The "audit" job kind: judge every pending (pair, order), then report per subset."""
    params = AuditParams.from_dict(ctx.params)
    ws = ctx.workspace
    endpoint = params.endpoint
    pair_ids = params.pair_ids
    store = VerdictStore.for_dataset(ws, params.dataset)
    rows = sampled_rows(ws, params.dataset, pair_ids)
    ledger = RequestLedger(ctx.results_dir / "requests.log")
    budget = Budget(params.max_calls, params.max_tokens, spent=ledger.spent())
    client = _WatchedClient(endpoint, os.environ.get(KEY_ENV), budget=budget, retry=params.retry, ledger=ledger)
    total = 2 * len(pair_ids)
    counted = threading.Lock()
    last = [0.0]

    def progress(outcome: JudgingOutcome, force: bool = False) -> None:
        with counted:  # worker threads and the watching loop both report; reading the store costs, so throttled
            if not force and time.monotonic() - last[0] < 0.5:
                return
            last[0] = time.monotonic()
            done = total - len(params.pending(store))
            ctx.progress(done, total, force=force, calls=budget.spent.calls, tokens=budget.spent.tokens,
                         invalid=outcome.invalid, failed=len(outcome.failed), budget_stop=outcome.budget,
                         retries=client.retries, errors=client.errors, last_error=client.last_error)

    with _dataset_lock(ws, params.dataset, ctx):
        # the total goes with the state: a reader between these two writes never sees "judging 0 of ?"
        ctx.set_state(JobState.RUNNING, "judging", total=total)
        pending = params.pending(store)
        progress(JudgingOutcome(), force=True)  # the total and the counts from the start, not "0 of ?"
        ctx.log(f"{len(pair_ids)} pairs, {len(pending)} of {total} judgments to request "
                f"(judge {endpoint.model}, prompt {params.prompt_version}, {budget.spent.calls} requests spent earlier)")
        outcome = _judge_all(ctx, client, store, rows, pending, params, progress)
        progress(outcome, force=True)

    ctx.check_cancel()
    report = audit_report(ws, params)
    result = {
        "report": report,
        "requests": budget.spent.calls,
        "tokens": budget.spent.tokens,
        "stored_now": outcome.stored,
        "invalid_now": outcome.invalid,
        "failed": outcome.failed,
        "budget_stop": outcome.budget,
        "complete": report["overall"]["pending"] == 0,
    }
    write_json(ctx.results_dir / "report.json", result)
    if outcome.fatal:
        raise MarginLensError(f"judge endpoint refused the audit: {outcome.fatal}")
    if outcome.all_failed:
        raise MarginLensError(
            f"stopped: {outcome.down} judge calls could not reach a working server and none was answered "
            f"({client.retries} retries; last error: {outcome.all_failed}); check the endpoint, then resume"
        )
    if outcome.failed and not outcome.budget:
        first = outcome.failed[0]
        raise MarginLensError(
            f"{len(outcome.failed)} judge calls failed after retries (first: pair {first['pair_id']} "
            f"order {first['order']}: {first['error']}); resubmit the audit to retry only those"
        )
    if outcome.budget:
        ctx.log(f"stopped: {outcome.budget}; {report['overall']['pending']} pairs still pending")
    return result
