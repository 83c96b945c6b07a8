"""`marginlens app`: the dashboard's own CLI command.

It lives with the dashboard, not in core: core's CLI finds it through the installed package's
`marginlens.commands` entry point, so core never names the layer above it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from marginlens.core.workspace import Workspace

MAIN = Path(__file__).resolve().parent / "main.py"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("app", parents=[common], help="start the dashboard")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--demo", action="store_true", help="make sure the built-in demo dataset is in the workspace")
    p.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    ws = Workspace.resolve(args.workspace)
    if args.demo:
        from marginlens.core.demo.build import ensure_demo

        print(ensure_demo(ws))
    # Every setting on the command line: an installed dashboard starts from any folder, where no
    # .streamlit/config.toml is there to read.
    command = [sys.executable, "-m", "streamlit", "run", str(MAIN), "--server.address", args.host,
               "--server.port", str(args.port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    print(f"MarginLens dashboard on http://{args.host}:{args.port}  (workspace {ws.root})", flush=True)
    env = {**os.environ, "MARGINLENS_WORKSPACE": str(ws.root)}
    # Become the server (no wrapper process): a signal to `marginlens app` then reaches streamlit itself,
    # and stopping it never leaves an orphaned server holding the port.
    os.execve(sys.executable, command, env)
