"""Following jobs from the command line, as a user runs it (the installed `marginlens` script, real worker
processes): Ctrl-C detaches and says how to come back, the job keeps running, `marginlens jobs` shows a
killed worker's job as interrupted, and `jobs resume` + `jobs follow` finish it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers_data import make_dataset
from marginlens.core import jobs
from marginlens.core.job_status import JobState
from marginlens.core.scoring.score_tables import load_score_table
from tiny_models import conversational_records, single_thread, tiny_llama  # noqa: F401

single_thread()

MARGINLENS = shutil.which("marginlens", path=str(Path(sys.executable).parent)) or "marginlens"
# A part after every batch (as in test_jobs.py), so a kill loses at most the batch in flight.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MARGINLENS_SCORE_FLUSH_SECONDS": "0"}


def cli(*args: str, workspace: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([MARGINLENS, *args, "--workspace", str(workspace)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def wait_until(predicate, what: str, timeout: float = 120.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended ({proc.returncode}) before {what}: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_ctrl_c_detaches_then_kill_shows_interrupted_then_resume_and_follow_finish(ws, tmp_path, tiny_llama):  # noqa: F811
    make_dataset(ws, "d", conversational_records(600, seed=4), tmp_path)  # hundreds of one-pair batches: seconds
    score = subprocess.Popen(
        [MARGINLENS, "score", "d", "--workspace", str(ws.root), "--policy", str(tiny_llama), "--device", "cpu",
         "--token-budget", "32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        (job,) = wait_until(lambda: jobs.list_jobs(ws, "score"), "the scoring job", proc=score)
        wait_until(lambda: job.status().state is JobState.RUNNING and job.status().done >= 2, "progress", proc=score)
        score.send_signal(signal.SIGINT)
        out, err = score.communicate(timeout=30)
    finally:
        if score.poll() is None:
            score.kill()
    assert score.returncode == 130, err
    assert f"detached: job {job.id} keeps running" in err
    assert f"marginlens jobs follow {job.id} --workspace {ws.root}" in err
    assert f"marginlens jobs cancel {job.id} --workspace {ws.root}" in err
    status = job.status()
    assert status.live and not (job.dir / "cancel").exists(), status  # leaving is not cancelling
    assert status.done < 600
    os.kill(status.pid, 0)  # the worker process itself is alive

    os.kill(status.pid, signal.SIGKILL)
    wait_until(lambda: job.status().state is JobState.INTERRUPTED, "interrupted", timeout=10)
    listing = cli("jobs", workspace=ws.root)
    assert listing.returncode == 0, listing.stderr
    (line,) = [row for row in listing.stdout.splitlines() if row.startswith(job.id)]
    assert " interrupted " in line and " running " not in line

    resumed = cli("jobs", "resume", job.id, workspace=ws.root)
    assert resumed.returncode == 0 and f"resumed {job.id}" in resumed.stdout, resumed.stderr
    followed = cli("jobs", "follow", job.id, workspace=ws.root)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines()[-1] == "done"  # the score command's own ending
    assert "done · 600 / 600 pairs" in followed.stderr  # the plain progress line of a non-terminal
    final = job.status()
    assert final.state is JobState.DONE and final.resumed
    assert load_score_table(ws, "d", job.result()["tables"]["policy"]).num_rows == 600


def test_jobs_needs_an_id_and_knows_its_actions(ws):
    missing = cli("jobs", "follow", workspace=ws.root)
    assert missing.returncode == 2 and "needs a job id" in missing.stderr
    unknown = cli("jobs", "show", "score-nope", workspace=ws.root)
    assert unknown.returncode == 2 and "no job 'score-nope'" in unknown.stderr
