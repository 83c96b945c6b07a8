"""Background jobs: a folder per job, a detached worker process, nothing held in a UI process.

  jobs/JOB_ID/spec.json     {"kind", "params", "job_id", "created"}  (never secrets)
  jobs/JOB_ID/status.json   {"state", "done", "total", "heartbeat", "pid", "message", "extra", ...}
                            written atomically; read as a typed JobStatus (core.job_status)
  jobs/JOB_ID/log.txt       the worker's output
  jobs/JOB_ID/cancel        flag file: the worker stops at its next check
  jobs/JOB_ID/results/      whatever the job kind appends as it goes (so a killed job resumes)

The job id is a hash of (kind, params): submitting the same spec twice gives the same job. The
worker holds an exclusive flock on jobs/JOB_ID/worker.lock for its whole life; the submitter takes
that lock *before* spawning and hands the descriptor to the child, so there is no window in which
two workers can start, and a SIGKILLed worker releases the lock with its process. The worker process
itself is core.job_worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginlens.core import actor, job_host, job_status
from marginlens.core.atomic import read_json, write_json
from marginlens.core.errors import MarginLensError
from marginlens.core.integrity import read_json_object
from marginlens.core.job_disk import write_status
from marginlens.core.job_status import FINISHED, LIVE, RESUMABLE, JobState, JobStatus
from marginlens.core.workspace import Workspace

__all__ = ["FINISHED", "KINDS", "LIVE", "RESUMABLE", "Job", "JobCancelled", "JobContext", "JobState", "JobStatus",
           "get_job", "job_id_for", "list_jobs", "resume", "submit"]

# kind -> "module:function"; the function takes a JobContext and returns a JSON-able result dict.
KINDS: dict[str, str] = {
    "audit": "marginlens.core.audit.audit_job:run",
    "evaluate": "marginlens.core.experiments.evaluate_job:run",
    "evolve": "marginlens.core.selfplay.evolve_job:run",
    "experiment": "marginlens.core.experiments.experiment_job:run",
    "import": "marginlens.core.data.import_job:run",
    "push": "marginlens.core.selection.push_job:run",
    "rollout": "marginlens.core.selfplay.rollout_job:run",
    "score": "marginlens.core.scoring.score_job:run",
    "selfplay": "marginlens.core.selfplay.selfplay_job:run",
    "train": "marginlens.core.training.train_job:run",
}

HEARTBEAT_SECONDS = 5.0


class JobCancelled(Exception):
    """Raised inside a worker when the cancel flag is seen."""


def job_id_for(kind: str, params: dict[str, Any]) -> str:
    canonical = json.dumps({"kind": kind, "params": params}, sort_keys=True, separators=(",", ":"), default=str)
    return f"{kind}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextmanager
def _flock(path: Path, blocking: bool = True):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _try_lock(fd: int, attempts: int = 10) -> bool:
    """Take the worker lock without waiting on a worker; retried briefly because Job.is_alive()
    (any status read, e.g. a dashboard poll) holds the same lock for an instant, and a submit that
    lost that race would otherwise start no worker at all."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(0.02)
    return False


@dataclass(frozen=True)
class Job:
    dir: Path

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def spec(self) -> dict[str, Any]:
        return read_json_object(self.dir / "spec.json", self.workspace.doctor_command) or {}

    @property
    def kind(self) -> str | None:
        return self.spec.get("kind")

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.dir.parent.parent)

    @property
    def results_dir(self) -> Path:
        path = self.dir / "results"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def log_path(self) -> Path:
        return self.dir / "log.txt"

    def is_alive(self) -> bool:
        """True while a worker holds the lock (robust to SIGKILL: the kernel drops the lock)."""
        with _flock(self.dir / "worker.lock", blocking=False) as fd:
            return fd is None

    @contextmanager
    def idle(self) -> Iterator[bool]:
        """Hold the worker lock, so that no worker starts while the caller works on the folder (`jobs clean`);
        yields False, holding nothing, while a worker runs."""
        with _flock(self.dir / "worker.lock", blocking=False) as fd:
            yield fd is not None

    def status(self) -> JobStatus:
        raw = self._read_status()
        if JobState.parse(raw.get("state", JobState.QUEUED)).live and not self.is_alive():
            # No worker holds the lock: it died without writing its outcome -- or it wrote "done" and
            # exited between the read above and the lock probe. A second read tells the two apart.
            raw = self._read_status()
            return JobStatus.from_dict(raw, alive=not JobState.parse(raw.get("state", JobState.QUEUED)).live)
        return JobStatus.from_dict(raw)

    def _read_status(self) -> dict[str, Any]:
        return read_json_object(self.dir / "status.json", self.workspace.doctor_command) or {}

    def cancel(self) -> None:
        actor.require_write("cancel a job")
        (self.dir / "cancel").touch()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait(self, poll: float = 0.5, on_status: Callable[[JobStatus], None] | None = None,
             timeout: float | None = None) -> JobStatus:
        """Block until the job is no longer live (finished or interrupted); returns that status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if on_status:
                on_status(status)
            if not status.live:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {status.state} after {timeout}s")
            time.sleep(poll)

    def result(self) -> dict[str, Any] | None:
        return read_json_object(self.dir / "result.json", self.workspace.doctor_command)


def _wait_for_exiting_worker(job: Job, fd: int, timeout: float = 30.0) -> bool:
    """Take the lock from a worker that is stopping (cancel requested, or cancelled/failed recorded).

    Interpreter shutdown after torch can take seconds; without this wait, resubmitting right after a
    stop returns the job as "running" and no worker ever restarts it.
    """
    deadline = time.monotonic() + timeout

    def stopping() -> bool:
        # A cancel flag not yet seen by the worker counts too: otherwise a resume right after a cancel
        # would return the still-running job, which then ends cancelled, and the resume did nothing.
        state = JobState.parse((read_json(job.dir / "status.json") or {}).get("state"))
        return state in (JobState.CANCELLED, JobState.FAILED) or (job.dir / "cancel").exists()

    while stopping():
        if _try_lock(fd, attempts=1):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return False


def submit(
    ws: Workspace,
    kind: str,
    params: dict[str, Any],
    env: dict[str, str] | None = None,
    launcher: list[str] | None = None,
) -> Job:
    """Start the job for this spec unless it is already running or done; return it either way.

    `env` reaches only the worker's environment (how secrets such as API keys travel: never in
    params, which are written to spec.json). `launcher` replaces the python interpreter in the
    worker command, e.g. ["accelerate", "launch", "--num_processes", "2"] for scale-out; it is kept in
    spec.json (not in the job id), so a resume without one relaunches the job the way it first ran.
    """
    if kind not in KINDS:
        raise MarginLensError(f"unknown job kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    started_by = actor.require_write(f"start a {kind} job").name
    job = Job(ws.jobs_dir / job_id_for(kind, params))
    job.dir.mkdir(parents=True, exist_ok=True)
    with _flock(job.dir / ".submit.lock"):
        if not (job.dir / "spec.json").exists():
            write_json(job.dir / "spec.json", {"kind": kind, "params": params, "job_id": job.id, "created": _now(),
                                               "launcher": launcher, "started_by": started_by})
        launcher = launcher or job.spec.get("launcher")
        if job.status().state is JobState.DONE:
            return job
        lock_fd = os.open(job.dir / "worker.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(lock_fd) and not _wait_for_exiting_worker(job, lock_fd):
                return job  # a worker is running it now
            (job.dir / "cancel").unlink(missing_ok=True)
            previous = read_json(job.dir / "status.json") or {}
            write_json(job.dir / "status.json",
                       {**previous, "state": JobState.QUEUED.value, "message": "starting", "heartbeat": _now(),
                        "submitted_at": time.time()})
            if not launcher and job_host.hosts(kind, env):
                job_host.start(job.dir, lock_fd)  # a parent's child: a thread here (core.job_host)
                lock_fd = -1  # the thread holds the lock now and closes it when the child has finished
            else:
                command = [*(launcher or [sys.executable]), "-m", "marginlens.core.job_worker", "run", str(job.dir)]
                with open(job.log_path, "ab") as log:
                    subprocess.Popen(
                        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        env={**os.environ, **(env or {})}, pass_fds=(lock_fd,), start_new_session=True,
                        cwd=os.getcwd(),
                    )
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)  # the child keeps its inherited copy, and with it the lock
    return job


def resume(ws: Workspace, job: Job, env: dict[str, str] | None = None) -> Job:
    """Resubmit the job's own spec: the same id, continuing from what its results folder holds, under the
    launcher it first ran with. A live or done job is returned as it is. `env`: as for `submit` (the
    secrets a spec never holds, such as an API key, must be given again)."""
    spec = job.spec
    if not spec:
        raise MarginLensError(f"job {job.id} has no spec.json")
    return submit(ws, spec["kind"], spec["params"], env=env)


def list_jobs(ws: Workspace, kind: str | None = None) -> list[Job]:
    jobs = [Job(p.parent) for p in ws.jobs_dir.glob("*/spec.json")]
    if kind:
        jobs = [j for j in jobs if job_status.listed_spec(j.dir).get("kind") == kind]
    return sorted(jobs, key=lambda j: str(job_status.listed_spec(j.dir).get("created", "")), reverse=True)


def get_job(ws: Workspace, job_id: str) -> Job:
    job = Job(ws.jobs_dir / job_id)
    if not (job.dir / "spec.json").exists():
        raise MarginLensError(f"no job {job_id!r} in {ws.root}")
    return job


class JobContext:
    """What a job function sees: its params, a results folder, progress, logging and cancellation."""

    def __init__(self, job: Job, workspace: Workspace, rank: int = 0, world_size: int = 1):
        self.job = job
        self.workspace = workspace
        self.spec = job.spec
        self.params: dict[str, Any] = self.spec["params"]
        self.rank = rank
        self.world_size = world_size
        self._status: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._last_write = 0.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def results_dir(self) -> Path:
        return self.job.results_dir

    def log(self, message: str) -> None:
        print(f"[{_now()}] {message}", flush=True)

    def cancelled(self) -> bool:
        return (self.job.dir / "cancel").exists()

    def check_cancel(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    def progress(self, done: int, total: int | None = None, force: bool = False, *, done_before: int | None = None,
                 **extra: Any) -> None:
        """Record progress; throttled to a write every 0.5 s unless `force`.

        `done_before`: how much of `done` this run did not compute (skipped as already written), left out
        of the rate. Without it, what was done when the worker started is left out, and a job that
        restarts its count lower (from a checkpoint) is measured from there.
        """
        with self._lock:
            if done_before is not None:
                self._status["rate_base"] = done_before
            elif done < self._status.get("rate_base", 0):
                self._status["rate_base"] = done
            self._status.update(done=done, progress_at=time.time(), **({"total": total} if total is not None else {}))
            self._status.setdefault("extra", {}).update(extra)
            if force or time.monotonic() - self._last_write > 0.5:
                self._write()

    def seconds_since_submitted(self) -> float | None:
        """Wall seconds since this run was submitted (a worker's start-up included), None if not recorded."""
        submitted = self._status.get("submitted_at")
        return time.time() - submitted if isinstance(submitted, (int, float)) else None

    def restart_rate(self) -> None:
        """The rate (and so the ETA) counts from now: called when the real work begins, after a model load
        that would otherwise drag the first minutes' rate down."""
        with self._lock:
            self._status["rate_since"] = time.time()
            self._status["rate_base"] = int(self._status.get("done") or 0)

    def start(self) -> None:
        """Mark the job running in this worker, keeping the progress a previous run recorded; the rate
        is measured from here, over what this run adds."""
        previous = read_json(self.job.dir / "status.json") or {}
        now = time.time()
        with self._lock:
            self._status = {k: v for k, v in previous.items() if k in ("done", "total", "extra", "submitted_at")}
        self.set_state(JobState.RUNNING, "running", started=_now(), finished=None, resumed=bool(previous.get("started")),
                       rate_since=now, rate_base=int(previous.get("done") or 0), progress_at=now)

    def set_state(self, state: JobState | str, message: str = "", *, extra: dict[str, Any] | None = None,
                  **fields: Any) -> None:
        with self._lock:
            if extra:
                self._status.setdefault("extra", {}).update(extra)
            self._status.update(state=JobState(state).value, message=message, **fields)
            self._write(final=JobState(state).finished)

    def _write(self, final: bool = False) -> None:
        if not self.is_main:
            return
        self._status.update(heartbeat=_now(), pid=os.getpid())
        # an outcome is written even on a full disk (write_status's fallbacks): else the job reads as dead
        (write_status if final else write_json)(self.job.dir / "status.json", self._status)
        self._last_write = time.monotonic()

    def heartbeat_forever(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                if JobState.parse(self._status.get("state")).finished:
                    return
                with contextlib.suppress(OSError, MarginLensError):  # a full disk: the job's own writes say so
                    self._write()
