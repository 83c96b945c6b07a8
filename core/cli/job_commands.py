"""`marginlens jobs [list | show | follow | cancel | resume] [JOB_ID]`: every background job, whatever started it."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from marginlens.core.workspace import Workspace

if TYPE_CHECKING:
    from marginlens.core.jobs import Job

ACTIONS = ("list", "show", "follow", "cancel", "resume")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("jobs", parents=[common], help="list background jobs, or show / follow / cancel / resume one")
    p.add_argument("action", nargs="?", choices=ACTIONS, default="list")
    p.add_argument("job_id", nargs="?", help="job id (for show, follow, cancel, resume)")
    p.add_argument("--kind", default=None, help="only jobs of this kind (score, audit, train, import, push)")
    p.set_defaults(func=cmd_jobs)


def follow_any(job: Job) -> int:
    """Follow with the follower of the command that starts this kind, so a reattach ends the same way."""
    kind = job.kind
    if kind == "score":
        from marginlens.core.cli.score_commands import follow_job
    elif kind == "train":
        from marginlens.core.cli.train_commands import follow_job
    elif kind == "audit":
        from marginlens.core.cli.audit_commands import follow_job
    else:
        from marginlens.core.cli.follow import follow

        code = follow(job)
        result = job.result() or {}
        if code == 0:
            print(result.get("summary") or json.dumps(result, indent=2))
        return code
    return follow_job(job)


def cmd_jobs(args: argparse.Namespace) -> int:
    from marginlens.core import jobs
    from marginlens.core.errors import MarginLensError

    ws = Workspace.resolve(args.workspace)
    if args.action == "list":
        rows = jobs.list_jobs(ws, kind=args.kind)
        if not rows:
            print(f"no jobs in {ws.root}")
        for job in rows:
            status = job.status()
            done = f"{status.done}/{status.total}" if status.total else "-"
            print(f"{job.id:<28} {job.spec.get('created', ''):<21} {status.state:<12} {done:>12}  {status.message}")
        return 0
    if not args.job_id:
        raise MarginLensError(f"`marginlens jobs {args.action}` needs a job id (see `marginlens jobs`)")
    job = jobs.get_job(ws, args.job_id)
    if args.action == "show":
        print(json.dumps({"spec": job.spec, "status": job.status().to_dict(), "result": job.result()}, indent=2))
        print(job.log_tail())
    elif args.action == "follow":
        return follow_any(job)
    elif args.action == "cancel":
        job.cancel()
        print(f"cancel requested for {job.id}; it stops at its next check (a training run saves a checkpoint first)")
    else:  # the same spec resubmitted is the same job, continuing from what it wrote
        jobs.resume(ws, job)
        print(f"resumed {job.id}; follow it with `marginlens jobs follow {job.id}`")
    return 0
