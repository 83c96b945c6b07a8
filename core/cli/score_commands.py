"""`marginlens score`: score a dataset as a background job, and follow it (core.cli.follow)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from marginlens.core.workspace import Workspace

if TYPE_CHECKING:
    from marginlens.core.jobs import Job


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from marginlens.core.scoring.models import DEFAULT_POLICY
    from marginlens.core.scoring.scorers import explicit_scorers
    from marginlens.core.scoring.tokenization import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PROMPT_LENGTH, MODES

    p = sub.add_parser("score", parents=[common], help="score a dataset's pairs (implicit and explicit margins)")
    p.add_argument("name", help="dataset name in the workspace")
    p.add_argument("--policy", default=DEFAULT_POLICY,
                   help=f"causal LM (Hub id or folder) for the implicit margin (default {DEFAULT_POLICY}); "
                        "'none' to skip")
    p.add_argument("--reference", default=None, help="reference model for the DPO-form implicit margin")
    explicit = p.add_mutually_exclusive_group()
    for scorer in explicit_scorers():  # one flag per explicit-margin scorer (core.scoring.scorers)
        option = scorer.option
        explicit.add_argument(option.flag, dest=f"explicit_{scorer.name}", default=None, metavar=option.metavar,
                              help=option.help)
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
    p.add_argument("--detach", action="store_true", help="return at once; follow later with `marginlens jobs follow JOB_ID`")
    p.set_defaults(func=cmd_score)


def _spec(args: argparse.Namespace):
    from marginlens.core.errors import MarginLensError
    from marginlens.core.scoring.score_spec import ScoreSpec
    from marginlens.core.scoring.scorers import explicit_scorers

    batch = args.batch_size
    if batch != "auto":
        try:
            batch = int(batch)
        except ValueError:
            raise MarginLensError(f"--batch-size must be 'auto' or a positive integer, not {batch!r}") from None
        if batch < 1:
            raise MarginLensError(f"--batch-size must be 'auto' or a positive integer, not {batch}")
    policy = None if (args.policy or "").lower() == "none" else args.policy
    given = [(s.name, getattr(args, f"explicit_{s.name}")) for s in explicit_scorers()
             if getattr(args, f"explicit_{s.name}") is not None]  # at most one: a mutually exclusive group
    explicit, value = given[0] if given else (None, None)
    return ScoreSpec(dataset=args.name, policy=policy, reference=args.reference, explicit=explicit,
                     explicit_value=value, device=args.device, max_length=args.max_length,
                     max_prompt_length=args.max_prompt_length, mode=args.mode, batch_size=batch,
                     token_budget=args.token_budget, trust_remote_code=list(args.trust_remote_code))


def _launcher(processes: int) -> list[str] | None:
    if processes <= 1:
        return None
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]


def cmd_score(args: argparse.Namespace) -> int:
    from marginlens.core.scoring.score_submit import submit_scoring

    ws = Workspace.resolve(args.workspace)
    handle = submit_scoring(ws, _spec(args), launcher=_launcher(args.processes))
    for role, fingerprint in handle.fingerprints.items():
        print(f"{role:>9}: {fingerprint}{'  (cached)' if role in handle.cached else ''}")
    if handle.job is None:
        return 0
    print(f"job {handle.job.id}  (log: {handle.job.log_path})")
    if args.detach:
        return 0
    return follow_job(handle.job)


def follow_job(job: Job) -> int:
    from marginlens.core.cli.follow import follow

    code = follow(job)
    if code == 0:
        print("done")
    return code
