"""Children of a parent job run inside the parent's own worker process, each in a thread of its own.

A lab or self-play chain runs dozens of short children (train, evaluate, rollout, ...). As processes, each
paid for a fresh interpreter, the torch/transformers/TRL imports and the device's start-up before doing a few
seconds of work. A parent that calls `enable(run_worker)` (core.experiments.job_tree does) makes `core.jobs.submit` run
its plain children here instead: the same job folder, id, spec, status and log, the same worker function
(core.job_worker.run_worker), the same worker lock (taken by the submitter and held by the child's thread), so
everything that reads a job sees no difference but the pid, which is the parent's.

What stays as it was: a kill -9 of the worker kills parent and child together, and resubmitting the parent
resumes both from their folders (the kernel drops both locks); a cancel reaches the child through its cancel
file. What changes: a child killed for memory (or crashing in native code) takes the parent with it, so the
chain stops until it is resubmitted instead of the parent resuming that child by itself.

Only train and evaluate children without secrets are hosted. A child given environment variables (a judge's
or rater's key) is spawned, so no key outlives its child in a shared process environment; so are rollouts
and rewrites (vLLM engines want a process, and the main thread, of their own), and children with a launcher
(`accelerate launch` over several processes). `MARGINLENS_CHILD_PROCESSES=1` turns hosting off (every child
its own process, as before; bench/child_startup.py compares the two).

Prints from the child's own thread go to its log; threads the child starts (a data loader's) and logging
handlers made before hosting began write to the parent's log.
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

HOSTED_KINDS = frozenset({"train", "evaluate"})
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


def hosts(kind: str, env: dict[str, str] | None) -> bool:
    """Whether a child of this kind, given this environment, runs here (see the module's note)."""
    return _RUNNER is not None and kind in HOSTED_KINDS and not env


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

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._target().encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self._target().errors

    @property
    def buffer(self):  # noqa: ANN201 (the target's binary buffer, for code that writes bytes)
        return self._target().buffer

    def fileno(self) -> int:  # faulthandler and subprocesses need a real descriptor: the parent's log
        return self._default.fileno()


def _install_router() -> None:
    if not isinstance(sys.stdout, _ThreadRouter):
        sys.stdout = _ThreadRouter(sys.stdout)
    if not isinstance(sys.stderr, _ThreadRouter):
        sys.stderr = _ThreadRouter(sys.stderr)


def start(job_dir: Path, lock_fd: int) -> None:
    """Run the job in a thread of this process. `lock_fd` holds the job's worker lock: the thread owns it
    from now on and closes it when the job has recorded its outcome."""
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
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_initialized():
                torch.cuda.empty_cache()  # and their cached GPU blocks, which a spawned child could not reach
