"""A job that runs other jobs: submit a child, wait for it, resume it when it was killed, pass a cancel on.

The experiments lab (core.experiments.experiment_job) and self-play (core.selfplay.selfplay_job) are such
jobs. Every child's id is a hash of its spec, so the parent keeps no state it cannot rebuild: a killed parent
is resumed by resubmitting it, which resubmits each child (finished -> returned as done, running -> waited
for, killed -> resumed). A child found killed while the parent waits is resubmitted at once. Children run
one at a time; cancelling the parent cancels the running child (a train job saves a checkpoint first). They run
in threads of the parent's worker (core.job_host), so the interpreter, imports and device start are paid for once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from marginlens.core import job_host
from marginlens.core.errors import MarginLensError
from marginlens.core.job_status import JobState, JobStatus
from marginlens.core.job_worker import run_worker
from marginlens.core.jobs import Job, JobCancelled, JobContext

CHILD_RESTARTS = 2  # a child found killed is resumed this many times before the parent gives up
POLL_SECONDS = 0.5
CANCEL_WAIT_SECONDS = 300.0  # a train job saves a checkpoint before it stops


class JobTree:
    """Base of a parent job: `save(message)` records its state (subclasses write their files there)."""

    def __init__(self, ctx: JobContext, steps_total: int):
        self.ctx, self.ws, self.results = ctx, ctx.workspace, ctx.results_dir
        self.steps_total, self.steps_done = steps_total, 0
        job_host.enable(run_worker)

    def save(self, message: str) -> None:
        self.ctx.progress(self.steps_done, self.steps_total, force=True, step=message)
        self.ctx.log(message)

    def child(self, what: str, submit_child: Callable[[], Job], record: dict[str, Any], key: str) -> Job:
        """Submit a child and wait for it; resubmit it when it is found killed; propagate a cancel.
        `record[key]` gets the child's id (the page links it)."""
        for attempt in range(CHILD_RESTARTS + 1):
            self.ctx.check_cancel()
            job = submit_child()
            record[key] = job.id
            self.save(f"{what}: job {job.id}" + (f" (resumed, attempt {attempt + 1})" if attempt else ""))
            status = self._wait(job)
            if status.state is JobState.DONE:
                return job
            if status.state is JobState.FAILED:
                raise MarginLensError(f"{what} failed (job {job.id}): {status.message}")
            if status.state is JobState.CANCELLED:
                raise MarginLensError(f"{what} was cancelled (job {job.id}); resubmit the parent job to resume it")
            self.ctx.log(f"{what}: job {job.id} was interrupted; resuming it")
        raise MarginLensError(f"{what} (job {job.id}) stopped {CHILD_RESTARTS + 1} times; see its log")

    def _wait(self, job: Job) -> JobStatus:
        while True:
            status = job.status()
            if not status.live:
                # the child's final state, so a finished parent never shows its last child as running
                self.ctx.progress(self.steps_done, self.steps_total, child=job.id, child_state=status.state.value)
                return status
            if self.ctx.cancelled():
                job.cancel()
                # A child hosted in this process (core.job_host) would die mid-checkpoint if this worker exited
                # first: wait for it as long as it takes. A spawned one stops by itself after we leave.
                hosted = status.pid == os.getpid()
                try:
                    job.wait(poll=POLL_SECONDS, timeout=None if hosted else CANCEL_WAIT_SECONDS)
                except TimeoutError:
                    self.ctx.log(f"job {job.id} did not stop within {CANCEL_WAIT_SECONDS:.0f} s; left to stop")
                raise JobCancelled()
            self.ctx.progress(self.steps_done, self.steps_total, child=job.id, child_state=status.state.value,
                              child_done=status.done, child_total=status.total)
            time.sleep(POLL_SECONDS)

    def evaluate_model(self, what: str, model: str, eval_set: Path, record: dict[str, Any], evaluator: Any, *,
                       baseline_model: str, device: str | None, env: dict[str, str]) -> None:
        """Evaluate `model` (an "evaluate" child) and put its summary into `record`. `evaluator`: an EvalSpec;
        an LLM one without a cap gets the plan's request count plus a quarter (experiment_plan.capped)."""
        from marginlens.core.experiments.eval_set import load_eval_set
        from marginlens.core.experiments.evaluate_job import evaluation_summary, submit_evaluation
        from marginlens.core.experiments.experiment_plan import capped

        n_prompts = len(load_eval_set(eval_set))
        if model == baseline_model and evaluator.kind == "judge":
            # the judge compares against the starting model: against itself it is a tie by definition
            record.update(mean=0.5, n=n_prompts, step="done", note="the starting model against itself")
            self.steps_done += 1
            return
        job = self.child(what, lambda: submit_evaluation(
            self.ws, model, eval_set, capped(evaluator, n_prompts), baseline_model=baseline_model, device=device,
            env=env), record, "eval_job")
        summary = evaluation_summary(job)
        record.update(mean=summary.mean, n=summary.n, invalid=summary.invalid, step="done",
                      **{k: getattr(summary, k) for k in ("wins", "ties", "losses") if getattr(summary, k) is not None})
        self.steps_done += 1
