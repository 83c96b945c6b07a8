"""Issue 12, point 1 (the job side): two training runs never share the machine unless asked -- a train job
waits for the machine's training slot, shown as queued with the run it waits for -- and a worker that died
is shown as dead, not as "running"."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time

from marginlens.core import jobs
from marginlens.core.cli import main
from marginlens.core.cli.follow import status_text
from marginlens.core.job_status import JobState
from marginlens.core.training import runs
from marginlens.core.training.train_slot import LOCK_ENV, training_slot
from tiny_models import tiny_llama  # noqa: F401  (session fixture)

PAIRS = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"Maybe {3 * i + 1}."}
         for i in range(4)]
FAST = {"learning_rate": 1e-3, "lr_scheduler_type": "constant", "warmup_steps": 0, "per_device_train_batch_size": 2,
        "effective_batch_size": 2, "max_length": 64, "max_steps": 2, "save_steps": 100}


def _until(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_train_job_queues_for_the_machine_and_a_killed_worker_reads_dead(ws, tmp_path, monkeypatch, capsys,
                                                                          tiny_llama):  # noqa: F811
    lock = tmp_path / "train.lock"
    monkeypatch.setenv(LOCK_ENV, str(lock))  # the workers inherit it: this test's own machine slot
    data = tmp_path / "export.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS), encoding="utf-8")
    holder = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another run holds the machine
    os.write(holder, b"train-someone-else")
    try:
        job = runs.submit_training(ws, data, "dpo", model=str(tiny_llama), device="cpu", overrides=FAST)
        queued = _until(lambda: (s := job.status()).message.startswith("queued") and s)
        assert queued.state is JobState.QUEUED and queued.live
        assert queued.message == "queued: waiting for the training run train-someone-else to finish"
        assert queued.message in status_text(queued, "steps", "")  # what `marginlens train` shows while it waits
        time.sleep(1.0)
        assert job.status().state is JobState.QUEUED  # still waiting: it did not start beside the other run
        assert not (job.results_dir / runs.METRICS_FILE).exists()

        # kill -9 the waiting worker: the job reads as dead, not as queued or running
        os.kill(queued.pid, signal.SIGKILL)
        dead = _until(lambda: (s := job.status()).state is JobState.INTERRUPTED and s)
        assert dead.message.startswith(f"dead: the worker (pid {queued.pid}) stopped without recording an outcome")
        capsys.readouterr()
        assert main(["jobs", "--workspace", str(ws.root)]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(job.id))
        assert "interrupted" in line and "dead: the worker" in line and "running" not in line.replace("interrupted", "")

        jobs.resume(ws, job)  # back in the queue, behind the same run
        _until(lambda: job.status().message.startswith("queued"))
    finally:
        os.close(holder)  # the other run ends: the queued one starts
    status = job.wait(poll=0.2, timeout=180)
    assert status.state is JobState.DONE, job.log_tail()
    assert len(runs.read_metrics(job)) == 2
    assert lock.read_text() == job.id  # it held the slot while it trained


def test_the_slot_is_free_when_the_run_ends_though_a_forked_child_lives(ws, tmp_path, monkeypatch):
    """A DataLoader worker forked inside the run shares the lock file's descriptor: the slot must still be
    free the moment the run leaves it, not when the last such child exits."""
    lock = tmp_path / "train.lock"
    monkeypatch.setenv(LOCK_ENV, str(lock))
    job = jobs.Job(ws.jobs_dir / "train-forks")
    job.dir.mkdir(parents=True)
    (job.dir / "spec.json").write_text(json.dumps({"kind": "train", "params": {}, "job_id": job.id}))
    with training_slot(jobs.JobContext(job, ws)):
        child = os.fork()
        if child == 0:  # the "DataLoader worker": holds every inherited descriptor, outlives the run
            time.sleep(30)
            os._exit(0)
    probe = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while the child kept the lock
    finally:
        os.close(probe)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
