"""`marginlens import | list | info`."""

from __future__ import annotations

import argparse
import json
import sys

from marginlens.core.workspace import Workspace


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from marginlens.core.data.formats import FORMATS

    p = sub.add_parser("import", parents=[common], help="import a preference dataset into the workspace")
    p.add_argument("source", help="file (.jsonl/.json/.parquet/.csv, optionally .gz), save_to_disk folder, or Hub id")
    p.add_argument("--name", required=True, help="dataset name in the workspace")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    p.add_argument("--map", dest="mapping", default=None,
                   help="explicit column mapping, e.g. prompt=question,chosen=good,rejected=bad,score_chosen=s1")
    # skip, as the dashboard's import does: one odd row in a million does not stop an import
    p.add_argument("--policy", choices=("skip", "strict"), default="skip",
                   help="skip (default): import the good rows, write the bad ones to a rejects file and print "
                        "how many; strict: stop at the first bad row, naming it")
    p.add_argument("--max-prompt-chars", type=int, default=None, help="reject prompts longer than this")
    p.add_argument("--empty-responses", choices=("keep", "reject"), default="keep",
                   help="keep (default): keep pairs whose chosen or rejected response is empty (e.g. a preferred "
                        "silent refusal), flagged empty_response; reject: treat them as bad rows")
    # the flag of earlier versions, when rejecting was the default; keeping is the default now
    p.add_argument("--allow-empty-responses", dest="empty_responses", action="store_const", const="keep",
                   help=argparse.SUPPRESS)
    p.add_argument("--split", default=None, help="split of a save_to_disk DatasetDict or Hub dataset")
    p.add_argument("--replace", action="store_true", help="replace an existing dataset of the same name")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("list", parents=[common], help="list imported datasets")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", parents=[common], help="rows, format, length statistics, score columns")
    p.add_argument("name")
    p.add_argument("--tokenizer", default=None, help="model id or folder whose tokenizer measures token lengths")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=cmd_info)


def cmd_import(args: argparse.Namespace) -> int:
    from marginlens.core.data.ingest import import_dataset, parse_mapping

    report = import_dataset(
        args.source, args.name, Workspace.resolve(args.workspace), format=args.format,
        mapping=parse_mapping(args.mapping), policy=args.policy, max_prompt_chars=args.max_prompt_chars,
        allow_empty_responses=args.empty_responses == "keep", split=args.split, replace=args.replace,
        progress=sys.stderr.isatty(),
    )
    print(report.summary())
    skipped = sum(report.rejected.values())
    if skipped:  # the summary lists them by reason; this says the total and where they are, once
        print(f"{skipped:,} bad row{'s' if skipped != 1 else ''} skipped, written with their row, field and reason "
              f"to {report.rejects_path} (--policy strict stops at the first bad row instead)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    ws = Workspace.resolve(args.workspace)
    names = ws.dataset_names()
    if not names:
        print(f"no datasets in {ws.root} (import one with `marginlens import SRC --name NAME`)")
        return 0
    from marginlens.core.integrity import DamagedFile

    print(f"{'name':<28} {'rows':>8} {'rejected':>8}  {'format':<28} source")
    damaged = 0
    for name in names:
        try:
            m = ws.dataset_manifest(name)
            ws.pairs_path(name)  # there (whether it reads back whole is `marginlens doctor`'s to check)
        except DamagedFile as exc:
            damaged += 1
            print(f"{name:<28} {'DAMAGED':>8} {'':>8}  {exc}")
            continue
        print(f"{name:<28} {m['rows']['imported']:>8} {m['rows']['rejected']:>8}  {m['format']:<28} {m['source']}")
    if damaged:
        print(f"{damaged} damaged dataset{'s' if damaged > 1 else ''}: `{ws.doctor_command()}` repairs what it can "
              f"(`{ws.doctor_command(repair=False)}` only lists the problems)", file=sys.stderr)
    return 0


# What `info` says about each import flag (core.data.formats sets them on pairs it keeps).
def _number(value: float, counts: bool) -> str:
    """Counts (turns, characters, tokens) as whole numbers; a mean, or a real-valued margin, with decimals."""
    return f"{value:,.0f}" if counts and float(value).is_integer() else f"{value:,.1f}" if counts else f"{value:,.3g}"


def _fmt_summary(summary: dict[str, float], counts: bool = True) -> str:
    if not summary:
        return "-"
    return "  ".join(f"{k} {_number(v, counts)}" for k, v in summary.items())


def _print_margin_sources(ws: Workspace, name: str) -> None:
    from marginlens.core.selection.margin_sources import dataset_margin_sources

    sources = dataset_margin_sources(ws, name)
    print(f"  metrics now:     {', '.join(sources.runnable)}")
    for note in sources.notes:
        print(f"  {note}")


def cmd_info(args: argparse.Namespace) -> int:
    from marginlens.core.data.dataset_stats import dataset_stats
    from marginlens.core.data.import_flags import flag_note

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    stats = dataset_stats(Workspace.resolve(args.workspace), args.name, tokenizer=tokenizer)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{stats['name']}: {stats['rows']} pairs, format {stats['format']}, source {stats['source']}")
    if stats["rejected"]:
        print(f"  rejected at import: {stats['rejected']} {stats['rejects_by_reason']}")
    print(f"  prompt turns:    {_fmt_summary(stats['turns'])}")
    for column, summary in stats["chars"].items():
        print(f"  {column + ' chars:':<16} {_fmt_summary(summary)}")
    for column, summary in stats.get("tokens", {}).items():
        print(f"  {column + ' tokens:':<16} {_fmt_summary(summary)}  (first {stats['tokens_sampled']} rows)")
    print(f"  score columns:   {', '.join(stats['score_columns']) or 'none (use a reward model when scoring)'}")
    if "explicit_margin" in stats:
        print(f"  explicit margin: {_fmt_summary(stats['explicit_margin'], counts=False)}")
    _print_margin_sources(Workspace.resolve(args.workspace), args.name)
    if stats["flags"]:
        print("  flagged at import (kept; `select --filter flagged=false` leaves them out):")
        for flag, n in stats["flags"].items():
            print(f"    {flag}: {n:,} {'pair' if n == 1 else 'pairs'} -- {flag_note(flag)}")
    return 0
