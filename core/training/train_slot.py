"""One training run at a time per machine and user: a train job waits, shown as queued, for the slot.

Two DPO runs side by side on a small machine do not train twice as fast; they run each other out of
memory. So the train job takes an exclusive flock on one lock file per machine and user before it loads
anything, and holds it until it ends. The kernel drops the lock when the worker dies, so a killed run
never blocks the queue. Runs wait in no fixed order: whichever waiting worker polls first starts.

  MARGINLENS_TRAIN_LOCK   the lock file (default: marginlens-train-UID.lock in the system temp folder, so
                          each user has a slot); one file every user can write makes it one run per
                          machine; "none" lets runs share the machine (several GPUs, or on purpose)

Multi-process runs (accelerate launch): only rank 0 takes the lock; the other ranks wait for the slot file
in the job folder to name their launcher, which rank 0 writes once it holds the lock.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from marginlens.core.job_status import JobState
from marginlens.core.jobs import JobContext
from marginlens.core.locks import exclusive

LOCK_ENV = "MARGINLENS_TRAIN_LOCK"
POLL_SECONDS = 0.5
_SLOT_FILE = "train-slot"  # in the job folder: the launcher pid whose ranks may start


def lock_path() -> Path | None:
    """The machine's training lock file, or None when runs may share the machine."""
    value = os.environ.get(LOCK_ENV, "").strip()
    if value.lower() == "none":
        return None
    return Path(value).expanduser() if value else Path(tempfile.gettempdir()) / f"marginlens-train-{os.getuid()}.lock"


def holder(path: Path) -> str:
    """The job id written into the lock file by the run holding it ('' when unknown)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _queued(ctx: JobContext, path: Path) -> None:
    other = holder(path)
    message = f"queued: waiting for the training run {other} to finish" if other else \
        "queued: waiting for another training run on this machine to finish"
    ctx.log(f"{message} (lock {path})")
    ctx.set_state(JobState.QUEUED, message)


@contextmanager
def training_slot(ctx: JobContext) -> Iterator[None]:
    """Hold the machine's training slot for the body; until it is free the job is queued (cancellable)."""
    path = lock_path()
    if path is None:
        yield
        return
    slot = ctx.job.dir / _SLOT_FILE
    launcher = str(os.getppid())
    if not ctx.is_main:
        _wait_for_rank0(ctx, slot, launcher)
        yield
        return
    slot.unlink(missing_ok=True)
    try:
        with exclusive(path, on_wait=lambda: _queued(ctx, path), check_cancel=ctx.check_cancel) as held:
            os.ftruncate(held.fd, 0)
            os.pwrite(held.fd, ctx.job.id.encode(), 0)
            if ctx.world_size > 1:
                slot.write_text(launcher, encoding="utf-8")
            if held.waited:
                ctx.set_state(JobState.RUNNING, "running")
            yield
    finally:
        slot.unlink(missing_ok=True)


def _wait_for_rank0(ctx: JobContext, slot: Path, launcher: str) -> None:
    while True:
        try:
            if slot.read_text(encoding="utf-8").strip() == launcher:
                return
        except FileNotFoundError:
            pass
        ctx.check_cancel()
        time.sleep(POLL_SECONDS)
