"""A lab run's fixed cost, before and after hosting children in the experiment's worker (core.job_host), in one
run: the same small lab on the demo twice from a cold process each, as a user runs it (bench/experiment_lab.py
in a fresh workspace), first with every child its own process (`--child-processes`, as before), then hosted.

    .venv/bin/python bench/child_startup.py [--metrics map,random] [--seeds 1] [--out bench/results/child_startup.json]

Prints, for each mode, the median seconds from a train child's submission to the start of its training (the
fixed cost) and to the end of its first optimizer step (the step's own compute included), the lab's wall time,
then the ratios. Training is cut to 1 step and evaluation to 8 held-out questions of 24 new
tokens, so the fixed cost is what is measured; any --set is passed on.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAB = Path(__file__).resolve().parent / "experiment_lab.py"
SMALL = ["--set", "max_steps=1", "--eval", "verifier:answer-match,max_new_tokens=24"]
EVAL_QUESTIONS = 8  # enough to run every evaluation child; the fixed cost, not the answers, is measured


EVAL_FILE = "eval.jsonl"


def _small_eval_set(path: Path) -> None:
    from marginlens.core.demo.build import DEMO_EVAL_FILE

    with gzip.open(DEMO_EVAL_FILE, "rt", encoding="utf-8") as src:
        path.write_text("".join(islice(src, EVAL_QUESTIONS)), encoding="utf-8")


def _run(mode: str, args: argparse.Namespace, folder: Path) -> dict:
    out = folder / f"{mode}.json"
    command = [sys.executable, str(LAB), "--out", str(out), "--workspace", str(folder / f"ws-{mode}"),
               "--metrics", args.metrics, "--seeds", str(args.seeds), *SMALL, "--eval-set", str(folder / EVAL_FILE),
               *(["--child-processes"] if mode == "processes" else []),
               *[part for item in args.overrides for part in ("--set", item)]]
    started = time.time()
    subprocess.run(command, check=True)
    result = json.loads(out.read_text(encoding="utf-8"))
    return {"wall_s": round(time.time() - started, 1), "first_step_s": result["first_step_s"],
            "train_begin_s": result["train_begin_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", default="map,random")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="child-startup-") as tmp:
        _small_eval_set(Path(tmp) / EVAL_FILE)
        # The demo's scores are built in each fresh workspace: both modes pay that alike, before the lab starts.
        results = {mode: _run(mode, args, Path(tmp)) for mode in ("processes", "hosted")}
    print("\nmode        training begins (median s)   first step done (median s)   lab wall time (s)")
    for mode, r in results.items():
        print(f"{mode:<11} {statistics.median(r['train_begin_s']):>25.1f}   "
              f"{statistics.median(r['first_step_s']):>26.1f}   {r['wall_s']:>17.1f}")

    def ratio(key: str) -> float:
        return statistics.median(results["hosted"][key]) / statistics.median(results["processes"][key])

    print(f"hosted/processes: training begins {ratio('train_begin_s'):.2f}, first step done "
          f"{ratio('first_step_s'):.2f}, lab wall time {results['hosted']['wall_s'] / results['processes']['wall_s']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
