"""The `marginlens` command line. Each command group is a module of this package that registers itself;
groups from the layers above core (the dashboard's `marginlens app`) arrive through the installed
package's `marginlens.commands` entry points.

Command modules import heavy libraries (torch, transformers) inside their handlers, so
`marginlens --help` and `marginlens list` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys

from marginlens.core import __version__
from marginlens.core.errors import MarginLensError

COMMAND_MODULES = [
    "marginlens.core.cli.data_commands",
    "marginlens.core.cli.select_commands",
    "marginlens.core.cli.audit_commands",
    "marginlens.core.cli.train_commands",
    "marginlens.core.cli.experiment_commands",
    "marginlens.core.cli.selfplay_commands",
    "marginlens.core.cli.score_commands",
    "marginlens.core.cli.job_commands",
    "marginlens.core.cli.doctor_commands",
]


# What `marginlens --help` opens with: for users (the module docstring above is for developers).
DESCRIPTION = """MarginLens: find the preference pairs worth training on, by their alignment potential (M_AP).

A dataset goes: import -> score (the policy's implicit margin) -> select (top pairs by M_AP, exported in
TRL's format) -> train. audit asks an LLM judge whether it agrees with the labels; app opens the dashboard."""
EPILOG = """example:
  marginlens import hh.jsonl.gz --name hh
  marginlens score hh
  marginlens select hh --metric map --ratio 0.4 --out hh-map.jsonl

`marginlens COMMAND --help` describes a command; background jobs: `marginlens jobs`."""


def _command_modules() -> list[str]:
    installed = [ep.value for ep in importlib.metadata.entry_points(group="marginlens.commands")]
    return COMMAND_MODULES + sorted(installed)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--workspace",
        default=argparse.SUPPRESS,
        help="workspace folder (default: $MARGINLENS_WORKSPACE or ./marginlens-workspace)",
    )
    parser = argparse.ArgumentParser(prog="marginlens", parents=[common], description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"marginlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _command_modules():
        importlib.import_module(name).register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "workspace"):
        args.workspace = None
    try:
        return int(args.func(args) or 0)
    except MarginLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `marginlens compare x | head`: the reader left; say nothing more (stdout is gone)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        # A full disk is the user's to fix, not a bug: one line naming the file (or, when the library that
        # wrote did not say, the workspace) and the space, like any MarginLensError. Anything else is a bug.
        from marginlens.core.atomic import disk_full_error, is_disk_full
        from marginlens.core.workspace import Workspace

        if not is_disk_full(exc):
            raise
        print(f"error: {disk_full_error(exc, near=Workspace.resolve(args.workspace).root, late=True)}", file=sys.stderr)
        return 2

