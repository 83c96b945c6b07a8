"""Children of a parent job run inside the parent's own worker process, each in a thread of its own.

A lab or self-play chain runs dozens of short children (train, evaluate, rollout, ...). As processes, each
paid for a fresh interpreter, the torch/transformers/TRL imports and the device's start-up before doing a few
seconds of work. A parent that calls `enable(run_worker)` (core.experiments.job_tree does) makes `core.jobs.submit` run
its plain children here instead: the same job folder, id, spec, status and log, the same worker function
(core.job_worker.run_worker), the same worker lock (taken by the submitter and held by the child's thread), so
everything that reads a job sees no difference but the pid, which is the parent's.

What stays as it was: a kill -9 of the worker kills parent and child together, and resubmitting the parent
resumes both from their folders (the kernel drops both locks); a cancel reaches the child through its cancel
file; a child with a launcher (`accelerate launch` over several processes) is still spawned.
`MARGINLENS_CHILD_PROCESSES=1` turns hosting off (every child its own process, as before; the bench compares).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

_RUNNER: Callable[[Path], int] | None = None  # core.job_worker.run_worker, given by the parent that hosts
_ROUTE = threading.local()  # .stream: where this thread's prints go (a hosted child's log.txt)


def enable(runner: Callable[[Path], int]) -> None:
    """Host this process's plain children in threads from now on (unless MARGINLENS_CHILD_PROCESSES=1), each
    run by `runner` (core.job_worker.run_worker: passed in, as the worker module itself imports core.jobs)."""
    global _RUNNER
    if os.environ.get("MARGINLENS_CHILD_PROCESSES") == "1":
        return
    _install_router()
    _RUNNER = runner


def hosting() -> bool:
    return _RUNNER is not None


class _ThreadRouter(io.TextIOBase):
    """sys.stdout/sys.stderr stand-in: a hosted child's thread writes to its own log, others as before."""

    def __init__(self, default: TextIO):
        self._default = default

    def _target(self) -> TextIO:
        return getattr(_ROUTE, "stream", None) or self._default

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # faulthandler and subprocesses need a real descriptor: the parent's log
        return self._default.fileno()


def _install_router() -> None:
    if not isinstance(sys.stdout, _ThreadRouter):
        sys.stdout = _ThreadRouter(sys.stdout)
    if not isinstance(sys.stderr, _ThreadRouter):
        sys.stderr = _ThreadRouter(sys.stderr)


def start(job_dir: Path, lock_fd: int, env: dict[str, str] | None) -> None:
    """Run the job in a thread of this process. `lock_fd` holds the job's worker lock: the thread owns it
    from now on and closes it when the job has recorded its outcome."""
    # A child's secrets (a judge's key) go where a spawned worker's environment would have had them. The
    # parent passes its own variables on, so this changes nothing the parent itself relies on.
    os.environ.update(env or {})
    threading.Thread(target=_run, args=(Path(job_dir), lock_fd), name=f"job-{Path(job_dir).name}",
                     daemon=True).start()


def _run(job_dir: Path, lock_fd: int) -> None:
    try:
        with open(job_dir / "log.txt", "a", encoding="utf-8", buffering=1) as log:
            _ROUTE.stream = log
            try:
                assert _RUNNER is not None
                _RUNNER(job_dir)
            finally:
                _ROUTE.stream = None
    finally:
        os.close(lock_fd)  # the lock goes only once the outcome is on disk, as when a worker process exits
        with contextlib.suppress(Exception):
            gc.collect()  # a finished child's model and optimizer go now, before the next child loads its own
