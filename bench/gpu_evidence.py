"""Does M_AP's subset train a better model than the other metrics' on the demo? One GPU call that answers it:
the experiments lab (bench/experiment_lab.py) with whole epochs, 4 metrics x 5 seeds, every held-out demo
question evaluated by the demo's checkable-answer verifier, inside 8 minutes on one H100/H200.

    .venv/bin/python bench/gpu_evidence.py --out bench/results/gpu_evidence-h200.json        # on the lent GPU
    .venv/bin/python bench/gpu_evidence.py --dry-run --policy DIR --out /tmp/evidence.json   # CPU rehearsal

Prints the plan, the table (each metric's mean over seeds with its interval, and the starting model's score),
the wall time against the 8-minute budget, and writes experiment_lab's JSON to --out. The dry run is the same
code path on the CPU, shrunk (2 metrics x 2 seeds, 1 step, 4 questions, 8 new tokens), so a lent GPU's minutes
are never spent finding a typo; the tests run it.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BUDGET_S = 8 * 60
# 2 whole epochs over each ~100-pair subset at batches of 8 (~26 optimizer steps a run), SimPO's settings from
# the lab bench otherwise; warmup is part of the preset (a share of all steps).
GPU_SETTINGS = ["max_steps=-1", "num_train_epochs=2", "learning_rate=2e-5", "save_steps=100000"]
DRY_SETTINGS = ["max_steps=1", "per_device_train_batch_size=2", "effective_batch_size=2", "max_length=128"]


def _small_eval_set(folder: Path, n: int) -> Path:
    from marginlens.core.demo.build import DEMO_EVAL_FILE

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"demo_eval_first{n}.jsonl"
    with gzip.open(DEMO_EVAL_FILE, "rt", encoding="utf-8") as src:
        path.write_text("".join(islice(src, n)), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workspace", default="bench-evidence-workspace")
    parser.add_argument("--policy", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="the same run shrunk, on the CPU")
    args = parser.parse_args(argv)
    import experiment_lab

    lab = ["--out", args.out, "--workspace", args.workspace, "--method", "simpo"]
    if args.policy:
        lab += ["--policy", args.policy]
    if args.dry_run:
        eval_set = _small_eval_set(Path(args.workspace), 4)
        lab += ["--device", "cpu", "--metrics", "map,random", "--seeds", "2", "--eval-set", str(eval_set),
                "--eval", "verifier:answer-match,max_new_tokens=8"]
        settings = DRY_SETTINGS
    else:
        lab += ["--device", args.device, "--metrics", "map,explicit,implicit,random", "--seeds", "5",
                "--eval", "verifier:answer-match,max_new_tokens=48"]
        settings = GPU_SETTINGS
    lab += [part for item in settings for part in ("--set", item)]
    started = time.time()
    code = experiment_lab.main(lab)
    took = time.time() - started
    verdict = "within" if took <= BUDGET_S else "OVER"
    print(f"gpu_evidence: {took / 60:.1f} min, {verdict} the {BUDGET_S // 60}-minute budget"
          + (" (dry run on the CPU: the budget is for the GPU run)" if args.dry_run else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
