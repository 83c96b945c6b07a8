"""`marginlens doctor [--repair]`: find the damaged files of a workspace; with --repair, fix what can be fixed."""

from __future__ import annotations

import argparse

from marginlens.core.workspace import Workspace


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common],
                       help="check every dataset, score table and job of the workspace for damaged files")
    p.add_argument("--repair", action="store_true",
                   help="fix what was found: damaged files are moved to WORKSPACE/quarantine/ (never deleted), "
                        "datasets imported again from their recorded source, damaged score tables dropped so the "
                        "next `marginlens score` computes them again, job status files rebuilt")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Exit code 0 when nothing is (left) damaged, 1 when something is."""
    from marginlens.core.doctor import check_workspace

    ws = Workspace.resolve(args.workspace)
    report = check_workspace(ws)
    print(report.summary())
    if not report.findings:
        print("no damaged file found")
        return 0
    if not args.repair:
        for finding in report.findings:
            print(f"damaged {finding.kind}: {finding.path}\n  what: {finding.problem}\n  fix:  {finding.fix}")
        print(f"{_count(len(report.findings))}: `{ws.doctor_command()}` repairs them (a damaged file is moved "
              f"to {ws.root / 'quarantine'}, never deleted)")
        return 1
    from marginlens.core.doctor_repair import repair_workspace

    repairs = repair_workspace(ws, report)
    for repair in repairs:
        head = "repaired" if repair.fixed else "NOT repaired"
        print(f"{head} {repair.finding.kind}: {repair.finding.path}\n  what: {repair.finding.problem}\n"
              f"  done: {repair.message}")
    left = check_workspace(ws).findings
    for finding in left:
        print(f"still damaged {finding.kind}: {finding.path}\n  what: {finding.problem}\n  fix:  {finding.fix}")
    unfixed = sum(not r.fixed for r in repairs)
    if left or unfixed:
        print(f"{_count(max(len(left), unfixed))} left: see above")
        return 1
    print(f"{_count(len(repairs))} repaired")
    return 0


def _count(n: int) -> str:
    return f"{n} problem{'s' if n != 1 else ''}"
