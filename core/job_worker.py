"""The worker process of a job (`python -m marginlens.core.job_worker run JOB_DIR`, spawned by
core.jobs.submit): run the kind's function, record how it ended.

Every ending is recorded, a full disk included: a worker that exits without writing its outcome reads as
dead ("interrupted ... killed, out of memory"), with the real cause only in its log. So the worker holds a
little space back while it runs (core.job_disk's reserve), frees it before it writes a failure, and
writes its final status.json through core.job_disk.write_status, which falls back to rewriting the file in
place. A finished job's status also says what it keeps on disk (extra "disk": the job folder, its
outputs, the leftovers `marginlens jobs clean` would remove).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from marginlens.core import job_disk
from marginlens.core.atomic import write_json
from marginlens.core.job_status import JobState
from marginlens.core.jobs import KINDS, Job, JobCancelled, JobContext, _now


def _disk_use(ctx: JobContext, state: JobState) -> dict[str, Any]:
    job = ctx.job
    try:
        return job_disk.disk_use(job.dir, ctx.spec.get("kind"), job_disk.read_result(job.dir),
                                 done=state is JobState.DONE)
    except OSError:  # a figure for the user, never a reason to lose the outcome
        return {}


def _finish(ctx: JobContext, state: JobState, message: str) -> None:
    if ctx.is_main:
        job_disk.release_space(ctx.job.dir)
    use = _disk_use(ctx, state) if ctx.is_main else {}
    ctx.set_state(state, message, finished=_now(), extra={"disk": use} if use else None)


def run_worker(job_dir: Path) -> int:
    """Run the job's function and record the outcome. Exit code 0 unless it failed."""
    job = Job(Path(job_dir))
    spec = job.spec
    ctx = JobContext(job, job.workspace, rank=int(os.environ.get("RANK", 0)),
                     world_size=int(os.environ.get("WORLD_SIZE", 1)))
    module_name, func_name = KINDS[spec["kind"]].split(":")
    try:
        ctx.start()  # on a disk that is already full even this first write fails: a failure like the others
        if ctx.is_main:
            job_disk.reserve_space(job.dir)
        threading.Thread(target=ctx.heartbeat_forever, daemon=True).start()
        result = getattr(importlib.import_module(module_name), func_name)(ctx)
        if ctx.is_main:
            write_json(job.dir / "result.json", result or {})
    except JobCancelled:
        with contextlib.suppress(OSError):
            ctx.log("cancelled")
        _finish(ctx, JobState.CANCELLED, "cancelled by user")
        return 0
    except BaseException as exc:  # the job's error becomes its status (a library's sys.exit too); traceback to the log
        job_disk.release_space(job.dir)  # on a full disk: room for the traceback below and the status
        with contextlib.suppress(OSError):  # a log that cannot grow must not stop the status being written
            traceback.print_exc()
            sys.stderr.flush()
        _finish(ctx, JobState.FAILED, job_disk.failure_message(exc, job.workspace.root))
        return 1
    _finish(ctx, JobState.DONE, "done")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m marginlens.core.job_worker run JOB_DIR", file=sys.stderr)
        return 2
    return run_worker(Path(argv[1]))


if __name__ == "__main__":
    # Run through the imported modules, not __main__, so KINDS and classes are the shared ones.
    from marginlens.core.job_worker import main as _main

    sys.exit(_main())
