"""`marginlens select | compare`: score pairs by M_AP or a baseline, export the top-k, compare metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from marginlens.core.selection.margins import DEFAULT_BETA
from marginlens.core.selection.metrics import (
    DEFAULT_METRIC,
    DEFAULT_PARAMS,
    MetricParams,
    get_metric,
    metric_names,
)
from marginlens.core.selection.select import FILTER_STAGES
from marginlens.core.workspace import Workspace


def _scorer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default=None,
                   help="logprob score table (fingerprint) for the implicit margin (default: the newest)")
    p.add_argument("--reference", default=None,
                   help="reference logprob table: use the DPO-form implicit margin instead of the SimPO form")
    p.add_argument("--beta", type=float, default=DEFAULT_BETA,
                   help=f"beta of the DPO-form implicit margin (default {DEFAULT_BETA})")
    p.add_argument("--reward", default=None,
                   help="reward score table for the explicit margin (default: the dataset's own scores, "
                        "else the newest reward table)")
    p.add_argument("--weight", type=float, default=DEFAULT_PARAMS.weight,
                   help=f"w in M_AP = z(m_ex) - w*z(|m_im|) (default {DEFAULT_PARAMS.weight})")
    p.add_argument("--signed", action="store_true", help="use m_im instead of |m_im| (signed variant)")
    p.add_argument("--seed", type=int, default=DEFAULT_PARAMS.seed,
                   help=f"seed of the random baseline and the threshold rule's sample (default {DEFAULT_PARAMS.seed})")
    p.add_argument("--threshold", type=float, default=DEFAULT_PARAMS.threshold, metavar="TAU",
                   help="tau of the threshold rule: only pairs with m_ex >= TAU, in the explicit margin's units "
                        f"(default {DEFAULT_PARAMS.threshold:g})")


def _metric_help() -> str:
    return (f"how pairs are ranked (default {DEFAULT_METRIC}): "
            + "; ".join(f"{name}: {get_metric(name).description}" for name in metric_names()))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("select", parents=[common], help="select the top pairs by a metric and export them")
    p.add_argument("name", help="dataset name")
    p.add_argument("--metric", choices=metric_names(), default=DEFAULT_METRIC, help=_metric_help())
    size = p.add_mutually_exclusive_group()
    size.add_argument("--ratio", type=float, default=None, help="select int(ratio*N) pairs (default 0.4)")
    size.add_argument("--count", type=int, default=None, help="select this many pairs")
    _scorer_args(p)
    p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help="repeatable: 'm_ex>=0.5', 'abs_m_im<0.1', 'chosen_chars<=2000', 'flagged=false', "
                        "'quadrant=high_potential,ambiguous', 'text~paris', 'prompt~capital'")
    p.add_argument("--filter-stage", choices=FILTER_STAGES, default="before",
                   help="before: filters choose the candidates that are ranked; after: they prune the top-k")
    p.add_argument("--out", required=True,
                   help="output path (symlinks resolved): a relative path goes under the workspace's exports/ "
                        "folder, and an absolute one must lie there too unless --outside-workspace")
    p.add_argument("--format", choices=("jsonl", "parquet", "hf"), default=None,
                   help="default: from the --out extension (.jsonl, .parquet; none: a save_to_disk folder); "
                        "an extension that contradicts it is an error")
    p.add_argument("--layout", choices=("source", "explicit"), default="source",
                   help="source: the dataset's own layout; explicit: always an explicit prompt column")
    p.add_argument("--with-metrics", action="store_true", help="add pair_id, m_ex, m_im, score and rank columns")
    p.add_argument("--ignore-flags", action="store_true",
                   help="export flagged pairs as they are (default: pairs flagged 'exclude' are left out and "
                        "pairs flagged 'swap' are label-swapped; see `marginlens flag`)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous MarginLens export at exactly --out: a file with OUT.manifest.json "
                        "beside it, or a save_to_disk folder holding only its files and marginlens_manifest.json. "
                        "Any other file or folder there is refused, never deleted; the new export is written "
                        "beside it and renamed into place")
    p.add_argument("--outside-workspace", action="store_true",
                   help="allow an output path outside the workspace; never the workspace itself, a folder "
                        "holding it, or anything in it outside exports/ (datasets, scores, jobs, audits, ...)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="then push the export to the Hub as a background job (needs network)")
    p.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN)")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("compare", parents=[common], help="overlap and rank correlation of the metrics' top-k")
    p.add_argument("name", help="dataset name")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--ratio", type=float, default=None, help="top-k size as a ratio (default 0.4)")
    size.add_argument("--count", type=int, default=None, help="top-k size")
    _scorer_args(p)
    p.add_argument("--suspects", type=int, default=10, help="how many pairs each list of contradicted labels shows")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_compare)


def _margins(args: argparse.Namespace, ws: Workspace):
    from marginlens.core.selection.margins import default_scorers, load_margins

    defaults = default_scorers(ws, args.name)
    policy = args.policy or defaults["policy"]
    reward = args.reward or defaults["reward"]
    return load_margins(ws, args.name, policy_fp=policy, reference_fp=args.reference, reward_fp=reward,
                        beta=args.beta)


def _check_runnable(margins: Any, metric: str, dataset: str) -> None:
    """A metric whose margin is missing is refused with what is missing and what runs instead."""
    from marginlens.core.errors import MarginLensError
    from marginlens.core.selection.margin_sources import margin_sources, missing_note

    sources = margin_sources(margins)
    if metric not in sources.runnable:
        notes = " ".join([*sources.notes, *filter(None, [missing_note(margins, metric)])])
        raise MarginLensError(f"--metric {metric} cannot run on {dataset!r}. {notes} Metrics that run now: "
                              f"{', '.join(sources.runnable)}")


def cmd_select(args: argparse.Namespace) -> int:
    from marginlens.core.selection.export import export_selection
    from marginlens.core.selection.filters import parse_filter
    from marginlens.core.selection.select import SelectionSpec, select

    ws = Workspace.resolve(args.workspace)
    token = None
    if args.push_to_hub:
        from marginlens.core.selection.push_job import hub_token

        token = hub_token(args.push_to_hub, args.token)  # offline or no token: refuse before writing anything
    filters = [parse_filter(f) for f in args.filter]
    margins = _margins(args, ws)
    _check_runnable(margins, args.metric, args.name)
    spec = SelectionSpec(metric=args.metric, weight=args.weight, signed=args.signed, ratio=args.ratio,
                         count=args.count, seed=args.seed, filters=filters, filter_stage=args.filter_stage,
                         threshold=args.threshold)
    texts = None
    if any(f.op == "~" for f in filters):
        from marginlens.core.data.pairs import load_texts

        texts = load_texts(ws, args.name)
    selection = select(margins, spec, texts)
    result = export_selection(
        ws, args.name, selection, margins, args.out, args.format, layout=args.layout,
        include_metrics=args.with_metrics, overwrite=args.overwrite, allow_outside=args.outside_workspace,
        apply_flags=not args.ignore_flags,
    )
    for warning in selection.warnings:
        print(f"warning: {warning}")
    c = selection.counts()
    print(f"selected {c['selected']} of {c['candidates']} candidate pairs ({c['total']} in {args.name!r}) "
          f"by {args.metric}; wrote {Path(result.path).resolve()}")
    if not Path(args.out).expanduser().is_absolute():  # a user who typed x.parquet looks for it in the cwd
        print(f"  --out {args.out} is relative, so it went under the workspace's exports/ folder "
              f"({ws.exports_dir.resolve()}); `marginlens train {args.out}` finds it there")
    flags = result.manifest["flags"]
    if flags["applied"] and (flags["excluded_in_export"] or flags["swapped_in_export"]):
        print(f"flags: left out {flags['excluded_in_export']} pairs flagged 'exclude', label-swapped "
              f"{flags['swapped_in_export']} flagged 'swap' (--ignore-flags to keep them as they are)")
    elif not flags["applied"] and (flags["excluded"] or flags["swapped"]):
        print(f"flags ignored: {len(flags['excluded']) + len(flags['swapped'])} flagged pairs exported as they are")
    print(f"manifest: {result.manifest_path}")
    if args.push_to_hub:
        from marginlens.core.cli.follow import follow
        from marginlens.core.selection.push_job import submit_push

        job = submit_push(ws, result.path, args.push_to_hub, token=token)
        print(f"push job {job.id}", flush=True)
        code = follow(job)
        if code == 0:
            print((job.result() or {}).get("summary", "pushed"))
        return code
    return 0


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    from marginlens.core.selection.compare import CONTRADICTED_TITLE, SUSPECTS_TITLE, compare_metrics

    ws = Workspace.resolve(args.workspace)
    margins = _margins(args, ws)
    report = compare_metrics(margins, ratio=args.ratio, count=args.count,
                             params=MetricParams(args.weight, args.signed, args.seed, args.threshold),
                             suspects=args.suspects)
    quads = report.quadrants
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(f"{args.name}: top {report.k:,} of {report.n:,} pairs with both margins "
          f"(m_im: {margins.attrs.get('m_im_form')}, m_ex: {margins.attrs.get('m_ex_source')})\n")
    print("overlap of the top-k sets")
    print(_table(report.overlap, ["metric_a", "metric_b", "intersection", "jaccard"]) + "\n")
    print("rank correlation of the scores")
    print(_table(report.correlations, ["metric_a", "metric_b", "spearman", "kendall"]) + "\n")
    print(f"quadrants (m_ex split {quads.ex_split:.3f}, |m_im| split {quads.im_split:.3f})")
    print(_table(quads.counts, ["quadrant", "n", "share", "n_negative_im", "mean_m_ex", "mean_m_im"]) + "\n")
    counts = report.contradicted_counts
    print(f"{CONTRADICTED_TITLE} (m_ex < 0: the explicit margin prefers the rejected answer; the likeliest label "
          f"noise): {counts['n']:,} pairs, {counts['both']:,} of them with m_im < 0 too")
    print(_table(report.contradicted, ["rank", "source_row", "m_ex", "m_im", "prompt_preview"]) + "\n")
    print(f"{SUSPECTS_TITLE} (m_ex above its median, m_im < 0: noise only where the explicit margin can be "
          "wrong; audit before dropping)")
    print(_table(report.suspects, ["rank", "source_row", "m_ex", "m_im", "suspicion", "prompt_preview"]))
    return 0
