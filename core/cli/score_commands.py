"""`marginlens score` (score a dataset as a background job) and `marginlens jobs` (list, cancel, resume)."""

from __future__ import annotations

import argparse
import sys
import time

from marginlens.core.workspace import Workspace


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from marginlens.core.scoring.models import DEFAULT_POLICY
    from marginlens.core.scoring.tokenization import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PROMPT_LENGTH, MODES

    p = sub.add_parser("score", parents=[common], help="score a dataset's pairs (implicit and explicit margins)")
    p.add_argument("name", help="dataset name in the workspace")
    p.add_argument("--policy", default=DEFAULT_POLICY,
                   help=f"causal LM (Hub id or folder) for the implicit margin (default {DEFAULT_POLICY}); "
                        "'none' to skip")
    p.add_argument("--reference", default=None, help="reference model for the DPO-form implicit margin")
    explicit = p.add_mutually_exclusive_group()
    explicit.add_argument("--reward-model", default=None, help="reward model for the explicit margin")
    explicit.add_argument("--scores", default=None, metavar="COLUMNS",
                          help="explicit margin from columns: 'score_chosen,score_rejected', 'A,B' or 'all_rm_scores'")
    p.add_argument("--batch-size", default="auto", help="most pairs per batch, or 'auto' (default)")
    p.add_argument("--token-budget", type=int, default=None, help="padded tokens per batch (default: from the device)")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    p.add_argument("--max-prompt-length", type=int, default=DEFAULT_MAX_PROMPT_LENGTH)
    p.add_argument("--mode", choices=MODES, default="clean",
                   help="tokenisation: clean (default) or reference (SimPO's preprocessing, to match the paper)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--trust-remote-code", action="append", default=[], metavar="MODEL",
                   help="allow this one model's own code (e.g. ArmoRM); repeat per model; off by default")
    p.add_argument("--processes", type=int, default=1,
                   help="data-parallel worker processes (one per GPU) under accelerate launch")
    p.add_argument("--detach", action="store_true", help="return at once; follow with `marginlens jobs`")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("jobs", parents=[common], help="list background jobs, or cancel / resume one")
    p.add_argument("action", nargs="?", choices=("list", "cancel", "resume", "show"), default="list")
    p.add_argument("job_id", nargs="?", help="job id (for cancel, resume, show)")
    p.add_argument("--kind", default=None, help="only jobs of this kind (score, audit, train, ...)")
    p.set_defaults(func=cmd_jobs)


def _spec(args: argparse.Namespace):
    from marginlens.core.errors import MarginLensError
    from marginlens.core.scoring.score_job import ScoreSpec

    batch = args.batch_size
    if batch != "auto":
        try:
            batch = int(batch)
        except ValueError:
            raise MarginLensError(f"--batch-size must be 'auto' or a positive integer, not {batch!r}") from None
        if batch < 1:
            raise MarginLensError(f"--batch-size must be 'auto' or a positive integer, not {batch}")
    policy = None if (args.policy or "").lower() == "none" else args.policy
    return ScoreSpec(dataset=args.name, policy=policy, reference=args.reference, reward_model=args.reward_model,
                     score_columns=args.scores, device=args.device, max_length=args.max_length,
                     max_prompt_length=args.max_prompt_length, mode=args.mode, batch_size=batch,
                     token_budget=args.token_budget, trust_remote_code=list(args.trust_remote_code))


def _launcher(processes: int) -> list[str] | None:
    if processes <= 1:
        return None
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]


def cmd_score(args: argparse.Namespace) -> int:
    from marginlens.core.scoring.score_job import submit_scoring

    ws = Workspace.resolve(args.workspace)
    handle = submit_scoring(ws, _spec(args), launcher=_launcher(args.processes))
    for role, fingerprint in handle.fingerprints.items():
        print(f"{role:>9}: {fingerprint}{'  (cached)' if role in handle.cached else ''}")
    if handle.job is None:
        return 0
    print(f"job {handle.job.id}  (log: {handle.job.log_path})")
    if args.detach:
        return 0
    try:
        status = follow(handle)
    except KeyboardInterrupt:
        print(f"\nstill running in the background; `marginlens jobs cancel {handle.job.id}` stops it", file=sys.stderr)
        return 130
    if status["state"] != "done":
        print(f"job {status['state']}: {status.get('message', '')}", file=sys.stderr)
        print(handle.job.log_tail(15), file=sys.stderr)
        return 1
    print("done")
    return 0


def follow(handle) -> dict:
    """A progress bar over the job's status file: pairs, pairs/s, tokens/s, ETA."""
    from tqdm import tqdm

    bar = tqdm(total=None, unit="pair", dynamic_ncols=True, file=sys.stderr)
    try:
        def show(status: dict) -> None:
            progress = handle.progress()
            if progress["total"] and bar.total != progress["total"]:
                bar.total = progress["total"]
            bar.n = progress["done"] or 0
            eta = progress["eta_s"]
            bar.set_postfix_str(
                f"{progress['pairs_per_s'] or 0:.1f} pairs/s, {progress['tokens_per_s'] or 0:.0f} tok/s, "
                f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta)) if eta is not None else '?'}", refresh=False)
            bar.refresh()

        return handle.job.wait(poll=0.5, on_status=show)
    finally:
        bar.close()


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
            total = status.get("total")
            done = f"{status.get('done', 0)}/{total}" if total else "-"
            print(f"{job.id:<28} {job.spec.get('created', ''):<21} {status.get('state', '?'):<12} {done:>12}  "
                  f"{status.get('message', '')}")
        return 0
    if not args.job_id:
        raise MarginLensError(f"`marginlens jobs {args.action}` needs a job id (see `marginlens jobs`)")
    job = jobs.get_job(ws, args.job_id)
    if args.action == "show":
        import json

        print(json.dumps({"spec": job.spec, "status": job.status(), "result": job.result()}, indent=2))
        print(job.log_tail())
    elif args.action == "cancel":
        job.cancel()
        print(f"cancel requested for {job.id}; it stops after its current batch")
    else:  # resume: the same spec resubmitted is the same job, continuing from what it wrote
        spec = job.spec
        jobs.submit(ws, spec["kind"], spec["params"])
        print(f"resumed {job.id}")
    return 0
