"""Self-play on the built-in demo, for real (not a test): SmolLM2-135M-Instruct evolves the demo's questions,
answers each prompt several times, a reference-free verifier annotates (self-consistency: an answer's reward is the
share of its sibling answers that claim the same number, since a rewritten question has no reference answer),
M_AP or eva's reward-gap rule ("explicit") picks the prompts to evolve, SimPO trains on the round's pairs, and
the demo's checkable-answer verifier scores every model on the demo's held-out eval set. CPU by default.

    .venv/bin/python bench/selfplay.py --out bench/results/selfplay-cpu.json

Prints the plan, follows the self-play job (Ctrl-C detaches; the same command resumes it, with the same
--workspace), then prints the table per iteration (mean over seeds, 95% t-interval), the run's date and its
duration, and writes the whole result as JSON to --out. With the defaults below it took 30.6 min on this
project's quiet 2-core CPU (2026-11-30).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# One training configuration for every round: batches of 8 pairs, at most 4 optimizer steps, the lab bench's
# learning rate (bench/experiment_lab.py), SimPO's paper preset otherwise.
SETTINGS = {
    "per_device_train_batch_size": 4,
    "effective_batch_size": 8,
    "max_steps": 4,
    "learning_rate": 1e-5,
    "max_length": 256,
    "save_steps": 1000,
}
# Short answers: the demo's questions want a number or a name. Rewrites may be a little longer.
SAMPLING = {"n": 4, "max_new_tokens": 48, "batch_size": 8}
EVOLVE = {"max_new_tokens": 64, "batch_size": 8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where the JSON result goes")
    parser.add_argument("--workspace", default="bench-selfplay-workspace",
                        help="workspace of the run (kept: running again resumes or reprints it)")
    parser.add_argument("--metrics", default="map,explicit")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--max-prompts", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--annotate", default="verifier:self-consistency")
    parser.add_argument("--eval", default="verifier:answer-match,max_new_tokens=48")
    parser.add_argument("--policy", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="cpu", help="cpu (the benchmark) or cuda")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from marginlens.core.atomic import write_json
    from marginlens.core.cli.follow import follow
    from marginlens.core.demo.build import DEMO_EVAL_FILE, DEMO_NAME, ensure_demo
    from marginlens.core.scoring.models import dtype_for
    from marginlens.core.selfplay.selfplay_job import selfplay_state, submit_selfplay
    from marginlens.core.selfplay.selfplay_results import table_lines
    from marginlens.core.selfplay.selfplay_spec import build_selfplay_spec, plan_selfplay
    from marginlens.core.training.settings import parse_overrides
    from marginlens.core.workspace import Workspace

    ws = Workspace(args.workspace)
    print(ensure_demo(ws), flush=True)
    dtype = dtype_for(args.device)
    overrides = {**SETTINGS, **({"bf16": True} if dtype == "bfloat16" else {}), **parse_overrides(args.overrides)}
    spec = build_selfplay_spec(
        ws, DEMO_NAME, annotate=args.annotate, eval=args.eval, policy=args.policy, iterations=args.iterations,
        metrics=args.metrics.split(","), seeds=args.seeds, ratio=args.ratio, max_prompts=args.max_prompts,
        sampling=SAMPLING, evolve=EVOLVE, eval_set=DEMO_EVAL_FILE, overrides=overrides, device=args.device)
    plan = plan_selfplay(ws, spec)
    print(f"self-play on the demo ({dtype} on {args.device}, {os.cpu_count()} CPU cores):")
    print("\n".join(f"  {line}" for line in plan.lines()), flush=True)
    started = time.time()
    job = submit_selfplay(ws, spec)
    print(f"self-play job {job.id} in {job.dir}", flush=True)
    code = follow(job)
    duration = time.time() - started
    table = job.result() or {}
    if code != 0 or not table:
        print(f"self-play did not finish (exit {code}); run the same command again to resume", file=sys.stderr)
        return code or 1
    status = job.status()
    date = time.strftime("%Y-%m-%d", time.gmtime())
    print("\n".join(table_lines(table)))
    print(f"date {date}; this command's wall time {duration / 60:.1f} min "
          f"(the job: started {status.started_at}, finished {status.finished_at}; resumed: {status.resumed})")
    state = selfplay_state(job)
    write_json(Path(args.out), {
        "date": date, "duration_s": round(duration, 1), "job_started": status.started_at,
        "job_finished": status.finished_at, "resumed": status.resumed,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "dtype": dtype,
                    "device": args.device, "python": platform.python_version()},
        "selfplay_job": job.id, "spec": spec.to_params(), "plan": plan.to_dict(), "table": table,
        "chains": state.get("chains"), "baseline": state.get("baseline"),
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
