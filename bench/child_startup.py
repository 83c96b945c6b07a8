"""A lab run's fixed cost, before and after hosting children in the experiment's worker (core.job_host), in one
run: the same small lab on the demo twice from a cold process each, as a user runs it (bench/experiment_lab.py
in a fresh workspace), first with every child its own process (`--child-processes`, as before), then hosted.

    .venv/bin/python bench/child_startup.py [--metrics map,random] [--seeds 1] [--out bench/results/child_startup.json]

Prints, for each mode, the median seconds from a train child's submission to its first optimizer step and the
lab's wall time, then the ratios. Training is cut to 1 step and evaluation to 24 new tokens, so the fixed cost
is what is measured; any --set is passed on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAB = Path(__file__).resolve().parent / "experiment_lab.py"
SMALL = ["--set", "max_steps=1", "--eval", "verifier:answer-match,max_new_tokens=24"]


def _run(mode: str, args: argparse.Namespace, folder: Path) -> dict:
    out = folder / f"{mode}.json"
    command = [sys.executable, str(LAB), "--out", str(out), "--workspace", str(folder / f"ws-{mode}"),
               "--metrics", args.metrics, "--seeds", str(args.seeds), *SMALL,
               *(["--child-processes"] if mode == "processes" else []),
               *[part for item in args.overrides for part in ("--set", item)]]
    started = time.time()
    subprocess.run(command, check=True)
    result = json.loads(out.read_text(encoding="utf-8"))
    return {"wall_s": round(time.time() - started, 1), "first_step_s": result["first_step_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", default="map,random")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="child-startup-") as tmp:
        # The demo's scores are built in each fresh workspace: both modes pay that alike, before the lab starts.
        results = {mode: _run(mode, args, Path(tmp)) for mode in ("processes", "hosted")}
    print("\nmode        first step (median s)   lab wall time (s)")
    for mode, r in results.items():
        print(f"{mode:<11} {statistics.median(r['first_step_s']):>20.1f}   {r['wall_s']:>17.1f}")
    before, after = (statistics.median(results[m]["first_step_s"]) for m in ("processes", "hosted"))
    print(f"first step: hosted/processes = {after / before:.2f}; lab wall time: hosted/processes = "
          f"{results['hosted']['wall_s'] / results['processes']['wall_s']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
