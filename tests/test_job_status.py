"""The typed job status (core.job_status) over real job folders: old status files read back, states stay
plain strings on disk, the rate and ETA count only what the current worker run does, and a live state
without a worker reads as interrupted."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time

import pytest
from marginlens.core import jobs
from marginlens.core.job_status import JobState, JobStatus, details, progress_line
from marginlens.core.workspace import Workspace

# What a status.json looked like before JobStatus existed (written by the dict-based core.jobs).
OLD_DONE = {"done": 40, "extra": {"pairs_per_s": 11.5, "tokens_per_s": 2345.6, "eta_s": 0.0, "task": "policy"},
            "finished": "2026-01-02T03:04:05Z", "heartbeat": "2026-01-02T03:04:05Z", "message": "done", "pid": 4242,
            "resumed": False, "started": "2026-01-02T03:00:00Z", "state": "done", "total": 40}


def make_job(ws: Workspace, job_id: str, status: dict | None, kind: str = "score") -> jobs.Job:
    job = jobs.Job(ws.jobs_dir / job_id)
    job.dir.mkdir(parents=True)
    (job.dir / "spec.json").write_text(json.dumps({"kind": kind, "params": {}, "job_id": job_id,
                                                   "created": "2026-01-02T03:00:00Z"}))
    if status is not None:
        (job.dir / "status.json").write_text(json.dumps(status))
    return job


def test_an_old_status_file_reads_back_typed(ws):
    job = make_job(ws, "score-old", OLD_DONE)
    status = job.status()
    assert isinstance(status, JobStatus) and status.state is JobState.DONE
    assert status.state == "done" and f"{status.state}" == "done" and str(status.state) == "done"
    assert (status.done, status.total, status.fraction, status.pid, status.message) == (40, 40, 1.0, 4242, "done")
    assert (status.started_at, status.finished_at) == ("2026-01-02T03:00:00Z", "2026-01-02T03:04:05Z")
    assert status.finished and not status.live and not status.resumable and status.error is None
    assert status.rate is None and status.eta_s is None  # no rate bookkeeping in an old file: no made-up speed
    assert status.extra["task"] == "policy"
    assert status.to_dict()["state"] == "done" and json.loads(json.dumps(status.to_dict()))["done"] == 40


def test_missing_and_unknown_fields_and_states_are_tolerated(ws):
    assert make_job(ws, "score-empty", None).status() == JobStatus(JobState.INTERRUPTED)  # queued, no worker
    odd = make_job(ws, "score-odd", {"state": "paused-by-a-newer-version", "done": "many", "extra": [1],
                                     "future_field": {"x": 1}, "total": 7})
    status = odd.status()
    assert status.state is JobState.INTERRUPTED and status.resumable
    assert (status.done, status.total, dict(status.extra)) == (0, 7, {})
    failed = make_job(ws, "score-failed", {"state": "failed", "message": "CUDA out of memory"}).status()
    assert failed.error == "CUDA out of memory" and failed.resumable


def test_a_live_state_without_a_worker_is_interrupted(ws):
    """status.json still says running, but no process holds the worker lock (the worker was killed)."""
    running = {**OLD_DONE, "state": "running", "finished": None}
    job = make_job(ws, "score-dead", running)
    assert job.status().state is JobState.INTERRUPTED
    # ...and while a process holds the lock, the same file reads as running.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(job.dir / 'worker.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert job.status().state is JobState.RUNNING and job.status().live
    finally:
        holder.kill()
        holder.wait()
    assert job.status().state is JobState.INTERRUPTED


def test_states_are_written_as_plain_strings(ws):
    job = make_job(ws, "score-ctx", OLD_DONE)
    ctx = jobs.JobContext(job, ws)
    ctx.start()
    raw = (job.dir / "status.json").read_text()
    assert '"state": "running"' in raw and "JobState" not in raw
    ctx.set_state("cancelled", "stopped")  # a plain string is accepted, as job functions pass today
    assert json.loads((job.dir / "status.json").read_text())["state"] == "cancelled"
    with pytest.raises(ValueError):
        ctx.set_state("paused")


def test_rate_and_eta_count_only_the_resumed_runs_work(ws):
    """600 of 1000 were done before a resume; the resumed worker adds 100 in ~1 s. Its rate is ~100/s
    (not ~700/s), so the ETA for the 300 left is ~3 s."""
    job = make_job(ws, "score-resumed", {"state": "cancelled", "done": 600, "total": 1000,
                                         "started": "2026-01-02T03:00:00Z"})
    ctx = jobs.JobContext(job, ws)
    ctx.start()
    with open(job.dir / "worker.lock", "w") as lock:  # this process plays the worker
        fcntl.flock(lock, fcntl.LOCK_EX)
        time.sleep(1.0)
        ctx.progress(700, 1000, force=True)
        status = job.status()
    raw = json.loads((job.dir / "status.json").read_text())
    assert status.resumed and status.done == 700 and raw["rate_base"] == 600
    assert status.rate == pytest.approx(100 / (raw["progress_at"] - raw["rate_since"]))
    assert 30 < status.rate <= 100  # counting the 600 done before would give ~700/s
    assert status.eta_s == pytest.approx(300 / status.rate, abs=0.5)
    assert "700 / 1,000 pairs" in progress_line(status, "pairs") and "ETA 00:00:" in progress_line(status, "pairs")

    # A job that restarts its count lower (training from an earlier checkpoint) is measured from there...
    ctx.progress(550, 1000, force=True)
    assert json.loads((job.dir / "status.json").read_text())["rate_base"] == 550
    # ...and one that names what it skipped (scoring replaying written batches) is taken at its word.
    ctx.progress(900, 1000, force=True, done_before=850)
    raw = json.loads((job.dir / "status.json").read_text())
    assert raw["rate_base"] == 850
    assert JobStatus.from_dict(raw).rate == pytest.approx(50 / (raw["progress_at"] - raw["rate_since"]))


def test_a_model_load_before_the_work_does_not_count_in_the_rate(ws):
    """A worker that spends 1.5 s loading a model, then does 100 pairs in ~0.5 s, reports ~200/s."""
    job = make_job(ws, "score-slow-load", None)
    ctx = jobs.JobContext(job, ws)
    ctx.start()
    with open(job.dir / "worker.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        time.sleep(1.5)  # the model load
        ctx.restart_rate()
        time.sleep(0.5)
        ctx.progress(100, 1000, force=True)
        status = job.status()
    raw = json.loads((job.dir / "status.json").read_text())
    assert raw["progress_at"] - raw["rate_since"] < 1.2  # measured from the restart, not the start
    assert status.rate > 100 / 1.5  # counting the load would give at most 100 / 2.0 = 50/s


def test_kind_details_come_from_what_the_job_reports():
    score = JobStatus(JobState.RUNNING, done=1500, total=10000, eta_s=3725.0,
                      extra={"tokens_per_s": 2345.6, "task": "policy"})
    assert progress_line(score, "pairs") == "1,500 / 10,000 pairs · ETA 01:02:05"
    assert details("score", score) == "2,346 tokens/s · policy"
    assert details("score", JobStatus(JobState.RUNNING)) == "— tokens/s"
    audit = JobStatus(JobState.RUNNING, extra={"calls": 1200, "tokens": 56000, "invalid": 2, "failed": 1})
    assert details("audit", audit) == "1,200 requests · 56,000 tokens · 2 invalid · 1 failed"
    assert details("train", JobStatus(JobState.RUNNING, extra={"loss": 0.69314, "accuracy": 0.5})) == \
        "loss 0.6931 · rewards/accuracies 0.5"
    assert details("import", audit) == ""
    # self-play's kinds: the rollout's stage, the orchestrator's step and running child
    assert details("rollout", JobStatus(JobState.RUNNING, extra={"step": "annotating"})) == "annotating"
    assert details("evolve", JobStatus(JobState.RUNNING, extra={"phase": "asking"})) == "asking"
    assert details("selfplay", JobStatus(JobState.RUNNING, extra={"step": "evolving", "child": "evolve-1",
                                                                  "child_state": "running"})) == \
        "evolving · evolve-1 running"


def test_wait_returns_a_typed_final_status(ws):
    job = make_job(ws, "score-waited", OLD_DONE)
    seen: list[JobStatus] = []
    final = job.wait(poll=0.01, on_status=seen.append, timeout=5)
    assert final.state is JobState.DONE and seen == [final]
