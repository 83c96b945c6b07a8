"""`marginlens audit | audit-report | flag | unflag`: the LLM-judge agreement audit and noisy-pair flags.

The API key is read from OPENAI_API_KEY only: a command-line argument would end up in shell history
and process listings.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from marginlens.core.audit.audit_params import DEFAULT_CONCURRENCY, AuditParams, audit_params
from marginlens.core.audit.subsets import (
    DEFAULT_N,
    DEFAULT_SAMPLE_SEED,
    ordered,
    sample_subsets,
    subsets_of,
)
from marginlens.core.selection.margins import default_margins, scored_counts
from marginlens.core.selection.metrics import DEFAULT_PARAMS, MetricParams, metric_names
from marginlens.core.workspace import Workspace

if TYPE_CHECKING:
    import pandas as pd
    from marginlens.core.jobs import Job


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("audit", parents=[common],
                       help="ask an LLM judge (OpenAI-compatible) whether it agrees with the labels, per subset")
    p.add_argument("name", help="dataset name")
    p.add_argument("--judge-model", required=True, help="model name at the endpoint, e.g. gpt-4o")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: api.openai.com); "
                                                     "key from $OPENAI_API_KEY")
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"pairs sampled per subset (default {DEFAULT_N})")
    p.add_argument("--subsets", default=None,
                   help=f"comma-separated metrics whose top-k is sampled (default: the paper's four that the dataset's margins "
                        f"allow, of {','.join(metric_names())})")
    p.add_argument("--ratio", type=float, default=None, help="top-k ratio of each subset (default 0.4)")
    p.add_argument("--weight", type=float, default=DEFAULT_PARAMS.weight,
                   help=f"M_AP weight w (default {DEFAULT_PARAMS.weight})")
    p.add_argument("--policy", default=None, help="logprob score table fingerprint (default: newest)")
    p.add_argument("--reward", default=None, help="reward score table fingerprint (default: dataset scores)")
    p.add_argument("--seed", type=int, default=DEFAULT_SAMPLE_SEED, help=f"sampling seed (default {DEFAULT_SAMPLE_SEED})")
    p.add_argument("--max-calls", type=int, default=None, help="stop before sending more requests than this")
    p.add_argument("--max-tokens", type=int, default=None, help="stop before using more tokens than this")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--max-output-tokens", type=int, default=128, help="judge answer length cap (default 128)")
    p.add_argument("--price-in", type=float, default=None, help="USD per million input tokens, for the estimate")
    p.add_argument("--price-out", type=float, default=None, help="USD per million output tokens, for the estimate")
    p.add_argument("--estimate", action="store_true", help="print the cost estimate and stop")
    p.add_argument("--detach", action="store_true", help="start the job and return without waiting")
    p.add_argument("--cancel", action="store_true", help="cancel the running audit with these settings")
    p.add_argument("--reask-invalid", action="store_true",
                   help="ask the judge again for this audit's off-format answers (new calls, charged and "
                        "recorded as a re-ask; the answers replaced stay in the verdict file)")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("audit-report", parents=[common], help="statistics of an audit job so far")
    p.add_argument("job_id", help="the audit's job id (printed by `marginlens audit`)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_report)

    p = sub.add_parser("flag", parents=[common],
                       help="flag pairs as noisy (excluded from exports, or label-swapped); no ids: list flags")
    p.add_argument("name", help="dataset name")
    p.add_argument("pair_ids", nargs="*", help="pair ids to flag")
    p.add_argument("--disagreements", action="store_true",
                   help="flag every pair the judge (--judge-model) prefers the other way in both orders")
    p.add_argument("--judge-model", default=None)
    p.add_argument("--swap", action="store_true", help="swap chosen and rejected in exports instead of excluding")
    p.add_argument("--reason", default="flagged as noisy")
    p.set_defaults(func=cmd_flag)

    p = sub.add_parser("unflag", parents=[common], help="remove noisy-pair flags")
    p.add_argument("name", help="dataset name")
    p.add_argument("pair_ids", nargs="*", help="pair ids to unflag")
    p.add_argument("--all", action="store_true", help="remove every flag of the dataset")
    p.set_defaults(func=cmd_unflag)


def _subsets(args: argparse.Namespace, margins: pd.DataFrame) -> tuple[str, ...]:
    """The metrics named, or by default the paper's metrics the margins allow (saying once why not the rest)."""
    if args.subsets is not None:
        return tuple(m.strip() for m in args.subsets.split(",") if m.strip())
    from marginlens.core.selection.margin_sources import margin_sources

    sources = margin_sources(margins)
    for note in sources.notes:
        print(note, file=sys.stderr)  # stderr: a --json report stays parseable
    return sources.paper_runnable


def _params(args: argparse.Namespace, ws: Workspace) -> AuditParams:
    from marginlens.core.chat_client import Endpoint

    # read once, with the tables asked for: the metrics offered, the subsets and the count all come from it
    margins = default_margins(ws, args.name, policy_fp=args.policy, reward_fp=args.reward)
    subsets = subsets_of(margins, _subsets(args, margins), args.ratio, MetricParams(weight=args.weight))
    n_scored, n_total = scored_counts(margins)
    if n_scored < n_total:
        # stderr: a --json report on stdout stays parseable
        print(f"{n_scored} of {n_total} pairs scored: the subsets are drawn from the scored pairs", file=sys.stderr)
    endpoint = Endpoint(model=args.judge_model, base_url=args.base_url, timeout=args.timeout,
                        max_output_tokens=args.max_output_tokens)
    return audit_params(args.name, sample_subsets(subsets, args.n, args.seed), endpoint,
                        max_calls=args.max_calls, max_tokens=args.max_tokens, concurrency=args.concurrency)


def _print_report(report: dict[str, Any]) -> None:
    from marginlens.core.audit.audit_report import no_decisive_note

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:5.1f}%"

    print(f"judge {report['judge_model']} ({report['prompt_version']}) on {report['dataset']}")
    print(f"{'subset':<10} {'n':>4} {'judged':>6} {'agree':>7} {'95% CI':>15} {'kappa':>6} {'consist':>7} {'invalid':>7}")
    for name, s in {**ordered(report["subsets"]), "overall": report["overall"]}.items():
        ci = "-" if s["ci_low"] is None else f"{100 * s['ci_low']:.0f}-{100 * s['ci_high']:.0f}%"
        kappa = "-" if s["kappa"] is None else f"{s['kappa']:.2f}"
        print(f"{name:<10} {s['n']:>4} {s['judged']:>6} {pct(s['agreement']):>7} {ci:>15} {kappa:>6} "
              f"{pct(s['position_consistency']):>7} {s['invalid']:>7}")
    if note := no_decisive_note(report["overall"]):  # a column of "-" under agree says nothing by itself
        print(note)


def cmd_audit(args: argparse.Namespace) -> int:
    from marginlens.core.audit.audit_job import submit_audit
    from marginlens.core.audit.audit_report import estimate_cost
    from marginlens.core.jobs import Job, job_id_for

    ws = Workspace.resolve(args.workspace)
    params = _params(args, ws)
    if args.reask_invalid:
        from marginlens.core.audit.audit_params import reask_params
        from marginlens.core.verdicts import VerdictStore

        reask = reask_params(VerdictStore.for_dataset(ws, args.name), params)
        if reask is None:
            print("no off-format answer among this audit's verdicts: nothing to ask again")
            return 0
        params = reask
    if args.cancel:
        job = Job(ws.jobs_dir / job_id_for("audit", params.to_dict()))
        job.cancel()
        print(f"cancel requested for {job.id}")
        return 0
    estimate = estimate_cost(ws, params, args.price_in, args.price_out)
    usd = "" if estimate.usd is None else f", about ${estimate.usd:.4f}"
    print(f"estimate: {estimate.calls} calls to make ({estimate.calls_stored} of {estimate.calls_total} "
          f"already stored), up to {estimate.tokens:,} tokens{usd}"
          + ("" if estimate.fits_budget else "; the budget will stop it early"))
    if args.estimate:
        return 0
    job = submit_audit(ws, params, on_warning=lambda text: print(f"warning: {text}", file=sys.stderr))
    print(f"job {job.id}")
    if args.detach:
        return 0
    return follow_job(job, as_json=args.json)


def follow_job(job: Job, as_json: bool = False) -> int:
    """Follow an audit job, then print its report (partial when it stopped early)."""
    from marginlens.core.audit.audit_report import audit_report
    from marginlens.core.cli.follow import DETACHED, follow

    code = follow(job)
    if code == DETACHED:
        return code
    report = audit_report(job.workspace, AuditParams.from_dict(job.spec["params"]))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    result = job.result() or {}
    if result.get("budget_stop"):
        print(f"stopped early: {result['budget_stop']}; raise --max-calls/--max-tokens to go on", file=sys.stderr)
    return code


def cmd_audit_report(args: argparse.Namespace) -> int:
    from marginlens.core.audit.audit_report import audit_report
    from marginlens.core.jobs import get_job

    ws = Workspace.resolve(args.workspace)
    job = get_job(ws, args.job_id)
    report = audit_report(ws, AuditParams.from_dict(job.spec["params"]))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0


def cmd_flag(args: argparse.Namespace) -> int:
    from marginlens.core.audit.audit_report import flag_disagreements
    from marginlens.core.data.flags import flag_pairs, load_flags
    from marginlens.core.errors import MarginLensError

    ws = Workspace.resolve(args.workspace)
    action = "swap" if args.swap else "exclude"
    if args.disagreements:
        if not args.judge_model:
            raise MarginLensError("--disagreements needs --judge-model (whose verdicts to act on)")
        ids = flag_disagreements(ws, args.name, args.judge_model, action=action)
        print(f"flagged {len(ids)} pairs the judge disagrees with ({action})")
    elif args.pair_ids:
        changed = flag_pairs(ws, args.name, args.pair_ids, action=action, reason=args.reason)
        print(f"flagged {len(args.pair_ids)} pairs ({changed} new or changed, {action})")
    else:
        for pid, flag in sorted(load_flags(ws, args.name).items()):
            print(f"{pid}  {flag['action']:<7}  {flag['time']}  {flag['reason']}")
    return 0


def cmd_unflag(args: argparse.Namespace) -> int:
    from marginlens.core.data.flags import unflag_pairs
    from marginlens.core.errors import MarginLensError

    if not args.all and not args.pair_ids:
        raise MarginLensError("name the pair ids to unflag, or pass --all")
    removed = unflag_pairs(Workspace.resolve(args.workspace), args.name, None if args.all else args.pair_ids)
    print(f"removed {removed} flags")
    return 0
