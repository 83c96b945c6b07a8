"""core/jobs.py through the real "score" kind: duplicate submission, cancel, kill -9 and resume."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from helpers_data import make_dataset
from marginlens.core import jobs
from marginlens.core.scoring.score_spec import ScoreSpec
from marginlens.core.scoring.score_submit import submit_scoring
from marginlens.core.scoring.score_tables import load_score_table
from marginlens.core.workspace import Workspace
from tiny_models import conversational_records, single_thread, smollm2, tiny_llama  # noqa: F401

single_thread()

# Write a part after every batch, so that a kill loses at most the batch in flight.
EVERY_BATCH = {"MARGINLENS_SCORE_FLUSH_SECONDS": "0"}


def wait_for(job: jobs.Job, predicate, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.status()
        if predicate(status):
            return status
        assert status.state not in jobs.FINISHED, (status, job.log_tail())
        time.sleep(0.1)
    raise AssertionError(f"timed out; last status {job.status()}\n{job.log_tail()}")


def test_duplicate_submission_is_one_job_and_one_worker(ws, tmp_path, tiny_llama):  # noqa: F811
    make_dataset(ws, "d", conversational_records(20, seed=1), tmp_path)
    spec = ScoreSpec("d", policy=str(tiny_llama), device="cpu", token_budget=200)
    handles: list = []
    threads = [threading.Thread(target=lambda: handles.append(submit_scoring(ws, spec))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({h.job.id for h in handles}) == 1
    job = handles[0].job
    assert job.wait(timeout=120).state == "done", job.log_tail()
    assert job.log_path.read_text().count("loading policy model") == 1  # one worker ran it
    assert len(jobs.list_jobs(ws, kind="score")) == 1
    again = jobs.submit(ws, "score", job.spec["params"])  # a done job is returned, not rerun
    assert again.id == job.id and again.status().state == "done"
    assert job.log_path.read_text().count("loading policy model") == 1


def test_cancel_then_resume(ws, tmp_path, tiny_llama):  # noqa: F811
    make_dataset(ws, "d", conversational_records(600, seed=4), tmp_path)  # seconds of work even when starved
    # A tiny budget makes one pair per batch: hundreds of batches, so the cancel lands mid-job.
    handle = submit_scoring(ws, ScoreSpec("d", policy=str(tiny_llama), device="cpu", token_budget=32),
                            env=EVERY_BATCH)
    job = handle.job
    wait_for(job, lambda s: s.state == "running" and s.done >= 5)
    job.cancel()
    status = job.wait(timeout=60)
    assert status.state == "cancelled" and 5 <= status.done < 600
    assert "cancelled" in job.log_tail()
    with pytest.raises(Exception, match="no finished score table"):
        load_score_table(ws, "d", handle.fingerprints["policy"])
    resumed = submit_scoring(ws, ScoreSpec("d", policy=str(tiny_llama), device="cpu", token_budget=32),
                             env=EVERY_BATCH)
    assert resumed.job.id == job.id
    assert resumed.job.wait(timeout=180).state == "done", job.log_tail()
    assert load_score_table(ws, "d", handle.fingerprints["policy"]).num_rows == 600


def test_resume_right_after_cancel_restarts_the_job(ws, tmp_path, tiny_llama):  # noqa: F811
    """A resume that lands before the worker has seen the cancel flag must still end in a finished job."""
    make_dataset(ws, "d", conversational_records(400, seed=6), tmp_path)
    spec = ScoreSpec("d", policy=str(tiny_llama), device="cpu", token_budget=32)
    job = submit_scoring(ws, spec, env=EVERY_BATCH).job
    wait_for(job, lambda s: s.state == "running" and s.done >= 2)
    job.cancel()
    resumed = jobs.submit(ws, "score", job.spec["params"], env=EVERY_BATCH)  # before the worker sees the flag
    assert resumed.id == job.id
    assert resumed.wait(timeout=180).state == "done", job.log_tail()
    assert not (job.dir / "cancel").exists()


def test_kill_9_then_resume_gives_identical_results(tmp_path, smollm2):  # noqa: F811
    """SmolLM2 end to end: SIGKILL mid-job -> "interrupted"; resubmitted it resumes from its parts and
    ends bit-identical to an uninterrupted run."""
    spec = ScoreSpec("d", policy="HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu", token_budget=160)
    records = [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
                "chosen": [{"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}],
                "rejected": [{"role": "assistant", "content": f"It is {2 * i + 1 + i % 3}, I believe."}]}
               for i in range(16)]
    interrupted_ws, clean_ws = Workspace(tmp_path / "a"), Workspace(tmp_path / "b")
    for ws in (interrupted_ws, clean_ws):
        make_dataset(ws, "d", records, tmp_path)

    handle = submit_scoring(interrupted_ws, spec, env=EVERY_BATCH)
    job = handle.job
    folder = job.results_dir / handle.fingerprints["policy"]
    status = wait_for(job, lambda s: s.state == "running" and len(list(folder.glob("part-*.parquet"))) >= 3,
                      timeout=180)
    os.kill(status.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while job.status().state != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.status().state == "interrupted"
    before = {p.name: p.read_bytes() for p in folder.glob("part-*.parquet")}
    assert 0 < len(before)

    resumed = submit_scoring(interrupted_ws, spec, env=EVERY_BATCH)
    assert resumed.job.id == job.id
    final = resumed.job.wait(timeout=180)
    assert final.state == "done" and final.resumed is True, job.log_tail()
    # What was written before the kill was kept, not recomputed or rewritten.
    assert {n: (folder / n).read_bytes() for n in before} == before

    clean = submit_scoring(clean_ws, spec)
    assert clean.job.wait(timeout=180).state == "done", clean.job.log_tail()
    got = load_score_table(interrupted_ws, "d", handle.fingerprints["policy"]).to_pylist()
    expected = load_score_table(clean_ws, "d", clean.fingerprints["policy"]).to_pylist()
    assert got == expected  # identical, not merely close
    assert all(r["chosen_ntok"] > 0 and r["chosen_logp"] < 0 for r in got)


def test_a_resume_relaunches_with_the_jobs_own_launcher(ws, tmp_path, tiny_llama):  # noqa: F811
    """`marginlens jobs resume` and the Score page resubmit without a launcher: the stored one is used
    (a job first started under accelerate must not come back as a single process)."""
    import stat
    import sys

    marks = tmp_path / "launches.txt"
    launcher = tmp_path / "launcher.sh"
    launcher.write_text(f'#!/bin/sh\necho launched >> "{marks}"\nexec "{sys.executable}" "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    make_dataset(ws, "d", conversational_records(400, seed=7), tmp_path)
    spec = ScoreSpec("d", policy=str(tiny_llama), device="cpu", token_budget=32)
    job = submit_scoring(ws, spec, env=EVERY_BATCH, launcher=[str(launcher)]).job
    wait_for(job, lambda s: s.state == "running" and s.done >= 2)
    job.cancel()
    assert job.wait(timeout=60).state == "cancelled"
    resumed = jobs.submit(ws, "score", job.spec["params"], env=EVERY_BATCH)  # as `jobs resume` does
    assert resumed.wait(timeout=180).state == "done", job.log_tail()
    assert marks.read_text().splitlines() == ["launched", "launched"]
