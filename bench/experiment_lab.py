"""The experiments lab on the built-in demo, for real (not a test): SmolLM2-135M-Instruct trained with SimPO
on each metric's top 40%, three seeds, evaluated by the demo's checkable-answer verifier on its held-out
eval set; on the CPU (bf16 mixed precision where the CPU has native bf16, as core.scoring.models.dtype_for
decides; float32 elsewhere).

    .venv/bin/python bench/experiment_lab.py --out bench/results/experiment_lab-cpu.json

Prints the plan, follows the experiment job (Ctrl-C detaches; running the same command again resumes it,
with the same --workspace), then prints the table, the run's date and its duration, and writes the whole
result (spec, plan, table, per-cell job ids, machine) as JSON to --out. The training settings below were
chosen so that the whole run takes ~20-30 minutes on a 2-core CPU; --set overrides them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# One configuration for every run: batches of 8 pairs, 5 optimizer steps (40 of a ~70-pair subset), a learning
# rate a 135M model moves at in that many steps, SimPO's beta and gamma/beta from the paper's preset. Measured on
# the 2-core machine under a load of ~4 (2026-11-29): ~50 s a step, ~5.7 min to generate 19 answers of up to 64
# tokens; on a quiet machine the whole bench is expected to take about half an hour (not yet measured).
SETTINGS = {
    "per_device_train_batch_size": 4,
    "effective_batch_size": 8,
    "max_steps": 5,
    "learning_rate": 1e-5,
    "max_length": 256,
    "save_steps": 1000,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where the JSON result goes")
    parser.add_argument("--workspace", default="bench-experiment-workspace",
                        help="workspace of the run (kept: running again resumes or reprints it)")
    parser.add_argument("--metrics", default="map,explicit,implicit,random")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--method", default="simpo", choices=("simpo", "dpo"))
    # answers to the demo's questions are short: 48 new tokens leave room for a sentence around them
    parser.add_argument("--eval", default="verifier:answer-match,max_new_tokens=48")
    parser.add_argument("--eval-set", default=None,
                        help="default: the demo's held-out eval set (DEMO_EVAL_FILE); 'heldout': a seeded share of "
                             "the demo's own prompts instead")
    parser.add_argument("--policy", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="cpu", help="cpu (the benchmark) or cuda (the same lab on a GPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--child-processes", action="store_true",
                        help="every child job its own process, as before core.job_host (the baseline of the "
                             "fixed-cost comparison, bench/child_startup.py)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child_processes:
        os.environ["MARGINLENS_CHILD_PROCESSES"] = "1"

    from marginlens.core.atomic import write_json
    from marginlens.core.cli.follow import follow
    from marginlens.core.demo.build import DEMO_NAME, ensure_demo
    from marginlens.core.experiments.experiment_job import child_env, experiment_state, submit_experiment
    from marginlens.core.experiments.experiment_plan import plan_experiment
    from marginlens.core.experiments.experiment_results import table_lines
    from marginlens.core.experiments.experiment_spec import build_spec
    from marginlens.core.scoring.models import dtype_for
    from marginlens.core.training.settings import parse_overrides
    from marginlens.core.workspace import Workspace

    ws = Workspace(args.workspace)
    print(ensure_demo(ws), flush=True)
    eval_set = None if args.eval_set == "heldout" else args.eval_set
    if args.eval_set is None:
        from marginlens.core.demo.build import DEMO_EVAL_FILE

        eval_set = DEMO_EVAL_FILE
    dtype = dtype_for(args.device)
    overrides = {**SETTINGS, **({"bf16": True} if dtype == "bfloat16" else {}), **parse_overrides(args.overrides)}
    spec = build_spec(ws, DEMO_NAME, metrics=args.metrics.split(","), ratio=args.ratio, method=args.method,
                      seeds=args.seeds, eval=args.eval, eval_set=eval_set, policy=args.policy,
                      overrides=overrides, device=args.device)
    plan = plan_experiment(ws, spec)
    print(f"experiment on the demo ({dtype} on {args.device}, {os.cpu_count()} CPU cores):")
    print("\n".join(f"  {line}" for line in plan.lines()), flush=True)
    started = time.time()
    job = submit_experiment(ws, spec, env=child_env(spec))
    print(f"experiment job {job.id} in {job.dir}", flush=True)
    code = follow(job)
    duration = time.time() - started
    table = job.result() or {}
    if code != 0 or not table:
        print(f"experiment did not finish (exit {code}); run the same command again to resume", file=sys.stderr)
        return code or 1
    status = job.status()
    date = time.strftime("%Y-%m-%d", time.gmtime())
    print("\n".join(table_lines(table)))
    print(f"date {date}; this command's wall time {duration / 60:.1f} min "
          f"(the job: started {status.started_at}, finished {status.finished_at}; resumed: {status.resumed})")
    state = experiment_state(job)
    first_steps, begins = _first_step_seconds(ws, state), _first_step_seconds(ws, state, "train_begin_s")
    if begins:
        print(f"start-up per run (submit -> training begins): median {statistics.median(begins):.1f} s")
    if first_steps:
        print(f"fixed cost per run (submit -> first optimizer step): median {statistics.median(first_steps):.1f} s "
              f"over {len(first_steps)} runs (min {min(first_steps):.1f}, max {max(first_steps):.1f}); children "
              f"{'each in its own process' if args.child_processes else 'hosted in the experiment worker'}")
    write_json(Path(args.out), {
        "first_step_s": first_steps, "train_begin_s": begins, "child_processes": args.child_processes,
        "date": date, "duration_s": round(duration, 1), "job_started": status.started_at,
        "job_finished": status.finished_at, "resumed": status.resumed,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "dtype": dtype,
                    "device": args.device, "gpu": _gpu_name(args.device),
                    "python": platform.python_version()},
        "experiment_job": job.id, "spec": spec.to_params(), "plan": plan.to_dict(), "table": table,
        "cells": state.get("cells"), "baseline": state.get("baseline"),
    })
    print(f"wrote {args.out}")
    return 0


def _first_step_seconds(ws, state: dict, key: str = "first_step_s") -> list[float]:
    """Each train child's seconds from its submission to its first optimizer step (core.training.train_job);
    key "train_begin_s": to the start of training, before the first step's own work."""
    from marginlens.core.jobs import get_job

    values = []
    for cell in (state.get("cells") or {}).values():
        if cell.get("train_job"):
            extra = get_job(ws, cell["train_job"]).status().extra or {}
            if isinstance(extra.get(key), (int, float)):
                values.append(float(extra[key]))
    return values


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(0)


if __name__ == "__main__":
    sys.exit(main())
