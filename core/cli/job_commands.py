"""`marginlens jobs [list | show | follow | cancel | resume | clean] [JOB_ID]`: every background job, whatever
started it. `show` summarises one job (`--json`: its spec, status and result as they are stored) and says what it
keeps on disk; `clean` removes a finished job's leftovers (core.job_disk)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from marginlens.core.jobs import KINDS
from marginlens.core.workspace import Workspace

if TYPE_CHECKING:
    from marginlens.core.jobs import Job, JobStatus

ACTIONS = ("list", "show", "follow", "cancel", "resume", "clean")
LIST_COLUMNS = f"{'job':<28} {'created':<21} {'started by':<16} {'state':<12} {'progress':>12}  message"
LOG_LINES = 15  # what `jobs show` quotes of the log (the dashboard's panel shows as many)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("jobs", parents=[common],
                       help="list background jobs, or show / follow / cancel / resume / clean one")
    p.add_argument("action", nargs="?", choices=ACTIONS, default="list")
    p.add_argument("job_id", nargs="?", help="job id (for show, follow, cancel, resume, clean)")
    # the registry is the only list of kinds: a new kind is listed (and accepted) here without an edit
    p.add_argument("--kind", default=None, choices=sorted(KINDS), metavar="KIND",
                   help=f"only jobs of this kind: {', '.join(sorted(KINDS))}")
    p.add_argument("--json", action="store_true",
                   help="show: print the job's spec, status and result as stored (JSON) instead of a summary")
    p.add_argument("--all-finished", action="store_true",
                   help="clean: every finished job (done, failed or cancelled; with --kind, of that kind). Removes "
                        "leftovers -- a done job's checkpoints and merged part files, unfinished writes -- never "
                        "final models, tables, exports or what a resume continues from")
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


def clean(job: Job) -> str:
    """Remove the job's leftovers (core.job_disk.leftovers) under its worker lock; what was done, as a line."""
    from marginlens.core import job_disk
    from marginlens.core.atomic import format_bytes
    from marginlens.core.errors import MarginLensError
    from marginlens.core.job_status import JobState

    status = job.status()  # before the lock: its liveness probe takes the same lock
    with job.idle() as idle:
        if status.live:
            raise MarginLensError(f"job {job.id} is {status.state}: its files are in use; clean it once it has "
                                  f"finished (or stop it: marginlens jobs cancel {job.id})")
        if not idle:
            raise MarginLensError(f"job {job.id} is {status.state} but a worker holds it (starting, or exiting): "
                                  "its files are in use; try again in a moment")
        # a job done before the lock stays done (nothing restarts it); any other is cleaned as not done
        done = status.state is JobState.DONE
        found = job_disk.leftovers(job.dir, job.kind, done)
        freed = job_disk.remove(found)
    names = ", ".join(str(p.relative_to(job.dir)) for p in found)
    line = f"{job.id}: removed {names} ({format_bytes(freed)})" if found else f"{job.id}: no leftovers"
    line += f"; {format_bytes(job_disk.bytes_on_disk(job.dir))} left in the job folder"
    if not done and status.resumable:
        line += f" (what `marginlens jobs resume {job.id}` continues from is kept)"
    return line


def clean_finished(ws: Workspace, kind: str | None) -> None:
    from marginlens.core import jobs
    from marginlens.core.errors import MarginLensError

    cleaned = 0
    for job in jobs.list_jobs(ws, kind=kind):
        try:
            if job.status().finished:
                print(clean(job))
                cleaned += 1
        except MarginLensError as exc:  # a damaged or newly started job: the others are still cleaned
            print(f"{job.id}: skipped: {exc}")
    if not cleaned:
        print(f"no finished jobs to clean in {ws.root}")


def _message(status: JobStatus) -> str:
    """The status message, unless it only repeats the state (a finished job's message is "done")."""
    return "" if status.message.strip().lower() == str(status.state).lower() else status.message


def _value(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def show_lines(job: Job, status: JobStatus, result: dict[str, Any] | None) -> list[str]:
    """`marginlens jobs show`: the job in lines a person reads (`--json` has the stored form)."""
    from marginlens.core.job_status import details, progress_line, unit_of

    spec = job.spec
    lines = [f"job {job.id} ({job.kind or 'unknown kind'})",
             f"  state:      {status.state}" + (f" · {_message(status)}" if _message(status) else "")]
    if status.total:
        lines.append(f"  progress:   {progress_line(status, unit_of(job.kind))}")
    if figures := details(job.kind, status):
        lines.append(f"  figures:    {figures}")
    lines.append(f"  created:    {spec.get('created') or '-'} by {spec.get('started_by') or '-'}")
    if status.started_at or status.finished_at:
        lines.append(f"  ran:        {status.started_at or '-'} -> {status.finished_at or '-'}"
                     + (" (resumed)" if status.resumed else ""))
    params = spec.get("params") or {}
    if params:
        lines.append("  params:")
        lines += [f"    {key}: {_value(value)}" for key, value in sorted(params.items())]
    if result:
        lines.append("  result:")
        if result.get("summary"):
            lines += [f"    {line}" for line in str(result["summary"]).splitlines()]
        lines += [f"    {key}: {_value(value)}" for key, value in sorted(result.items()) if key != "summary"]
    if status.live:
        lines.append(f"  follow it:  marginlens jobs follow {job.id}")
    elif status.resumable:
        lines.append(f"  resume it:  marginlens jobs resume {job.id}")
    tail = job.log_tail(LOG_LINES)
    lines.append(f"log (last {LOG_LINES} lines of {job.log_path}):" if tail else f"log: empty ({job.log_path})")
    lines += [f"  {line}" for line in tail.splitlines()]
    lines.append(f"raw spec, status and result: marginlens jobs show {job.id} --json")
    return lines


def cmd_jobs(args: argparse.Namespace) -> int:
    from marginlens.core import jobs
    from marginlens.core.errors import MarginLensError
    from marginlens.core.integrity import DamagedFile

    ws = Workspace.resolve(args.workspace)
    if args.action == "clean" and args.all_finished:
        if args.job_id:
            raise MarginLensError("`marginlens jobs clean` takes a job id or --all-finished, not both")
        clean_finished(ws, args.kind)
        return 0
    if args.action == "list":
        rows = jobs.list_jobs(ws, kind=args.kind)
        if not rows:
            print(f"no jobs in {ws.root}" + (f" of kind {args.kind}" if args.kind else ""))
            return 0
        print(LIST_COLUMNS)
        for job in rows:
            try:
                spec, status = job.spec, job.status()
                created, by = str(spec.get("created") or ""), str(spec.get("started_by") or "-")
            except DamagedFile as exc:  # listed as damaged; the other jobs still list
                print(f"{job.id:<28} {'':<21} {'':<16} {'damaged':<12} {'-':>12}  {exc}")
                continue
            done = f"{status.done}/{status.total}" if status.total else "-"
            print(f"{job.id:<28} {created:<21} {by[:16]:<16} {status.state:<12} {done:>12}  {_message(status)}".rstrip())
        return 0
    if not args.job_id:
        raise MarginLensError(f"`marginlens jobs {args.action}` needs a job id (see `marginlens jobs`)")
    job = jobs.get_job(ws, args.job_id)
    if args.action == "show":
        from marginlens.core import job_disk
        from marginlens.core.job_status import JobState

        status, result = job.status(), job.result()
        if args.json:  # the stored form, for scripts: nothing else on stdout
            print(json.dumps({"spec": job.spec, "status": status.to_dict(), "result": result}, indent=2))
            return 0
        print("\n".join(show_lines(job, status, result)))
        use = job_disk.disk_use(job.dir, job.kind, result, done=status.state is JobState.DONE)
        print("\n".join(job_disk.disk_lines(use, job.id, idle=not status.live)))
    elif args.action == "clean":
        print(clean(job))
    elif args.action == "follow":
        return follow_any(job)
    elif args.action == "cancel":
        job.cancel()
        print(f"cancel requested for {job.id}; it stops at its next check (a training run saves a checkpoint first)")
    else:  # the same spec resubmitted is the same job, continuing from what it wrote
        jobs.resume(ws, job)
        print(f"resumed {job.id}; follow it with `marginlens jobs follow {job.id}`")
    return 0
