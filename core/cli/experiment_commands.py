"""`marginlens experiment NAME --metrics map,explicit,implicit,random --ratio 0.4 --method simpo --seeds 3
--eval verifier:answer-match`: does selecting by a metric help, on this dataset?

For each metric and seed it selects the metric's top pairs, trains on them with one identical
configuration and evaluates the trained model on held-out prompts; the starting model is evaluated once
as the baseline. It prints what that will take and asks before starting (--yes skips the question), runs
as one background job tree (Ctrl-C detaches; running the same command again joins or resumes it), and
prints the table at the end: per metric the mean over seeds with a 95% t-interval, and the audit's judge
agreement per subset when the dataset has an audit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from marginlens.core.atomic import write_json
from marginlens.core.cli.follow import confirm_start
from marginlens.core.workspace import Workspace

EVAL_HELP = ("how a model is evaluated: verifier:NAME (a checkable-answer verifier), reward:MODEL (a reward "
             "model's mean reward), rating:MODEL (an LLM's 1-10 rating; --eval-url), judge:MODEL (pairwise win "
             "rate against the starting model, judged in both orders; --eval-url)")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from marginlens.core.experiments.experiment_spec import (
        DEFAULT_METRICS,
        DEFAULT_RATIO,
        DEFAULT_SEEDS,
        FIRST_SEED,
        HELDOUT_CAP,
        HELDOUT_SHARE,
    )
    from marginlens.core.selection.margins import DEFAULT_BETA
    from marginlens.core.selection.metrics import DEFAULT_PARAMS

    p = sub.add_parser("experiment", parents=[common], help="train on each metric's subset and evaluate held out",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="dataset name")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated metric names (default {','.join(DEFAULT_METRICS)})")
    p.add_argument("--ratio", type=float, default=DEFAULT_RATIO, help=f"train on the top int(ratio*N) pairs (default {DEFAULT_RATIO})")
    p.add_argument("--method", choices=("dpo", "simpo"), default="simpo", help="training method (default simpo)")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                   help=f"runs per metric, seeds {FIRST_SEED}, {FIRST_SEED + 1}, ...: the trainer's seed and the "
                        f"random metric's (default {DEFAULT_SEEDS})")
    p.add_argument("--eval", required=True, metavar="EVAL", help=EVAL_HELP)
    p.add_argument("--eval-url", default=None, help="OpenAI-compatible base URL for rating: and judge: evaluators")
    p.add_argument("--eval-set", default=None, metavar="FILE",
                   help="held-out prompts (JSONL: prompt, answer, task, id); default: a seeded "
                        f"{HELDOUT_SHARE * 100:.0f}%% of the dataset's prompts (at most {HELDOUT_CAP}), left out of training")
    p.add_argument("--policy", default=None, help="the starting model (default: SmolLM2-135M-Instruct)")
    p.add_argument("--policy-table", default=None, metavar="FINGERPRINT",
                   help="logprob score table of the implicit margin (default: the newest scored with --policy; "
                        "naming one scored with another model uses it anyway)")
    p.add_argument("--reward-table", default=None, metavar="FINGERPRINT",
                   help="reward score table of the explicit margin (default: the dataset's own scores, else the newest)")
    p.add_argument("--reference", default=None, metavar="TABLE",
                   help="reference logprob table: the DPO-form implicit margin (dpo_gap needs it)")
    p.add_argument("--beta", type=float, default=DEFAULT_BETA, help=f"beta of the DPO-form margin (default {DEFAULT_BETA})")
    p.add_argument("--weight", type=float, default=DEFAULT_PARAMS.weight,
                   help=f"w in M_AP = z(m_ex) - w*z(|m_im|) (default {DEFAULT_PARAMS.weight})")
    p.add_argument("--signed", action="store_true", help="use m_im instead of |m_im| (signed variant)")
    p.add_argument("--threshold", type=float, default=DEFAULT_PARAMS.threshold, metavar="TAU",
                   help=f"tau of the threshold rule: pairs with m_ex >= TAU (default {DEFAULT_PARAMS.threshold:g})")
    p.add_argument("--preset", default=None, help="training preset (default: the method's; see marginlens train --list-presets)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="repeatable training setting, the same for every run (e.g. max_steps=20, learning_rate=1e-5)")
    p.add_argument("--device", default=None, help="auto|cpu|cuda (default auto)")
    p.add_argument("--detach", action="store_true", help="submit and return; run the same command again to follow")
    p.add_argument("--yes", "-y", action="store_true", help="start without asking")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the final table as JSON here")
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    from marginlens.core.cli.follow import follow
    from marginlens.core.experiments.experiment_job import child_env, experiment_table, submit_experiment
    from marginlens.core.experiments.experiment_plan import plan_experiment
    from marginlens.core.experiments.experiment_results import audit_agreement, table_lines
    from marginlens.core.experiments.experiment_spec import build_spec
    from marginlens.core.job_status import JobState
    from marginlens.core.run_estimate import estimate_vs_actual, record_estimate
    from marginlens.core.training.settings import parse_overrides

    ws = Workspace.resolve(args.workspace)
    spec = build_spec(
        ws, args.name, metrics=args.metrics.split(","), ratio=args.ratio, method=args.method, seeds=args.seeds,
        eval=args.eval, eval_url=args.eval_url, eval_set=args.eval_set, policy=args.policy, preset=args.preset,
        overrides=parse_overrides(args.overrides), device=args.device, policy_fp=args.policy_table,
        reward_fp=args.reward_table, reference_fp=args.reference, beta=args.beta, weight=args.weight,
        signed=args.signed, threshold=args.threshold,
    )
    from marginlens.core.jobs import Job, job_id_for

    existing = Job(ws.jobs_dir / job_id_for("experiment", spec.to_params()))
    known = (existing.dir / "spec.json").exists()
    plan = None
    if not known or existing.status().state is not JobState.DONE:
        plan = plan_experiment(ws, spec)
        print(f"experiment on {args.name!r}: {', '.join(spec.metrics)} x seeds {', '.join(map(str, spec.seeds))}, "
              f"{spec.method}, evaluated by {args.eval}")
        for line in plan.lines():
            print(f"  {line}")
        if not known and not args.yes and not confirm_start("the experiment"):
            print("not started")
            return 1
    job = submit_experiment(ws, spec, env=child_env(spec))
    if not known and plan is not None and plan.estimate:
        record_estimate(job.dir, plan.estimate)
    print(f"experiment job {job.id}: {job.dir / 'results'}", flush=True)
    if args.detach:
        return 0
    code = follow(job)
    table = experiment_table(job)
    if table:
        agreement = audit_agreement(ws, args.name)
        print("\n".join(table_lines(table, agreement)))
        for line in estimate_vs_actual(job.dir):
            print(f"  {line}")
        if args.json:
            out = {**table, "experiment_job": job.id, "spec": spec.to_params(), "audit_agreement": agreement}
            write_json(Path(args.json).expanduser(), out)
            print(f"wrote {args.json}")
    return code
