"""`marginlens selfplay NAME --policy P --iterations 2 --metrics map,explicit --seeds 2 --ratio 0.25
--annotate verifier:self-consistency --eval verifier:answer-match`: does selecting by M_AP help a model that
improves itself?

The dataset's distinct prompts seed the run (held-out prompts aside for evaluation). For each metric and
seed, every iteration samples answers from the current model, annotates and pairs them, selects the top
prompts by the metric, evolves those into new prompts, trains on the pairs and evaluates the trained model;
the rewrites are the next iteration's prompts. It prints what that will take and asks before starting (--yes
skips the question), runs as one background job tree (Ctrl-C detaches; running the same command again joins
or resumes it), and prints per iteration and metric the mean over seeds with a 95% t-interval at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from marginlens.core.atomic import write_json
from marginlens.core.cli.follow import confirm_start
from marginlens.core.errors import MarginLensError
from marginlens.core.workspace import Workspace

ANNOTATE_HELP = ("how each sampled answer is scored to pick the best and worst: verifier:self-consistency "
                 "(reference-free, numeric answers: agreement with the other sampled answers), reward:MODEL or "
                 "rating:MODEL (--annotate-url). A rewritten prompt has no reference answer, so a verifier that "
                 "needs one cannot annotate; nor can a judge (it compares two models)")
EVAL_HELP = ("how each trained model is evaluated on the held-out prompts: verifier:NAME, reward:MODEL, "
             "rating:MODEL or judge:MODEL (win rate against the starting model; --eval-url)")


def with_base_url(text: str, url: str | None, option: str) -> Any:
    """parse_eval(text) with base_url set from `option` (--annotate-url, --eval-url): rating and judge only."""
    from marginlens.core.experiments.evaluators import parse_eval

    spec = parse_eval(text)
    if not url:
        return spec
    if not spec.asks_llm:
        raise MarginLensError(f"{option} sets the endpoint of a rating: or judge: model, not of {spec.label}")
    return dataclasses.replace(spec, base_url=url)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from marginlens.core.experiments.experiment_spec import FIRST_SEED
    from marginlens.core.selection.metrics import DEFAULT_PARAMS
    from marginlens.core.selfplay.evolve_job import EvolveParams
    from marginlens.core.selfplay.profiles import (
        CPU_MAX_NEW_TOKENS,
        DEFAULT_PROFILE,
        LENGTH_RATIO,
        PROFILES,
        REFERENCE_MAX_NEW_TOKENS,
        REFERENCE_TRAIN_SIZE,
    )
    from marginlens.core.selfplay.rollout_job import SAMPLING
    from marginlens.core.selfplay.selfplay_spec import (
        DEFAULT_ITERATIONS,
        DEFAULT_MAX_PROMPTS,
        DEFAULT_METRICS,
        DEFAULT_RATIO,
        selfplay_metrics,
    )
    from marginlens.core.selfplay.strategies import DEFAULT_STRATEGIES

    evolve = EvolveParams()
    p = sub.add_parser("selfplay", parents=[common], help="self-play: evolve prompts, select by a metric, train, repeat",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="dataset whose distinct prompts seed the run")
    p.add_argument("--policy", default=None, help="the starting model (default: SmolLM2-135M-Instruct)")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"rounds per metric and seed (default {DEFAULT_ITERATIONS})")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated selection metrics, those that read only a round's reward gap m_ex and "
                        f"implicit margin m_im: {', '.join(selfplay_metrics())} (default {','.join(DEFAULT_METRICS)}; "
                        "explicit is eva's reward-gap rule)")
    p.add_argument("--seeds", type=int, default=1,
                   help=f"chains per metric, seeds {FIRST_SEED}, {FIRST_SEED + 1}, ...: sampling, evolution and "
                        "training seeds (default 1)")
    p.add_argument("--ratio", type=float, default=DEFAULT_RATIO,
                   help=f"evolve the top int(ratio*N) prompts of each round (default {DEFAULT_RATIO})")
    p.add_argument("--annotate", required=True, metavar="EVAL", help=ANNOTATE_HELP)
    p.add_argument("--annotate-url", default=None, help="OpenAI-compatible base URL of a rating: annotator")
    p.add_argument("--eval", required=True, metavar="EVAL", help=EVAL_HELP)
    p.add_argument("--eval-url", default=None, help="OpenAI-compatible base URL of a rating: or judge: evaluator")
    p.add_argument("--eval-set", default=None, metavar="FILE",
                   help="held-out prompts (JSONL: prompt, answer, task, id); default: held out from the dataset "
                        "as the experiments lab does")
    p.add_argument("--evolver", default=None, metavar="KIND:MODEL",
                   help="who rewrites the prompts: local:MODEL (a folder or hub id) or openai:MODEL "
                        "(--evolver-url); default: the starting model, kept fixed")
    p.add_argument("--evolver-url", default=None, help="OpenAI-compatible base URL of an openai: evolver")
    p.add_argument("--evolver-key-env", default=None, metavar="NAME",
                   help="environment variable holding an openai: evolver's key (default OPENAI_API_KEY); the key "
                        "reaches the workers through the environment, never the job's spec")
    p.add_argument("--evolver-max-calls", type=int, default=None, metavar="N",
                   help="requests one evolve job of an openai: evolver may make, retries counted (default: no cap)")
    p.add_argument("--strategies", default=None,
                   help=f"comma-separated rewrite strategies (default all: {','.join(DEFAULT_STRATEGIES)})")
    p.add_argument("--max-prompts", type=int, default=DEFAULT_MAX_PROMPTS,
                   help=f"seed prompts drawn from the dataset, at most (default {DEFAULT_MAX_PROMPTS})")
    p.add_argument("--n", type=int, default=SAMPLING.n, help=f"answers sampled per prompt (default {SAMPLING.n})")
    p.add_argument("--temperature", type=float, default=SAMPLING.temperature,
                   help=f"sampling temperature (default {SAMPLING.temperature})")
    p.add_argument("--top-p", type=float, default=SAMPLING.top_p, help=f"sampling top_p (default {SAMPLING.top_p})")
    p.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE,
                   help=f"whose rules the rounds follow (default {DEFAULT_PROFILE}): reference = the authors' "
                        "evol_select scripts (system prompt, ties kept at margin 0, prompts with an empty answer "
                        f"dropped, at most {REFERENCE_TRAIN_SIZE} rewrite pairs, {REFERENCE_MAX_NEW_TOKENS} new "
                        f"tokens on a GPU and {CPU_MAX_NEW_TOKENS} on CPU, no length filter); marginlens = this "
                        "library's (docs/SELFPLAY.md compares them)")
    p.add_argument("--filter-prompt", action="store_true",
                   help=f"reference profile: keep rewrites within {LENGTH_RATIO:g}x their parent's length (the "
                        "authors' --filter_prompt; off by default)")
    p.add_argument("--train-size", type=int, default=None, metavar="N",
                   help=f"reference profile: rewrite pairs trained on per round, at most, a random draw (default "
                        f"{REFERENCE_TRAIN_SIZE})")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"tokens per sampled answer, at most (default: the profile's; marginlens "
                        f"{SAMPLING.max_new_tokens})")
    p.add_argument("--evolve-max-new-tokens", type=int, default=None,
                   help=f"tokens per rewrite, at most (default: the profile's; marginlens {evolve.max_new_tokens})")
    p.add_argument("--max-ratio", type=float, default=None,
                   help=f"a rewrite is kept within this factor of its parent's length (default: marginlens "
                        f"{evolve.max_ratio:g}; reference: no length filter unless --filter-prompt)")
    p.add_argument("--backend", choices=("auto", "transformers", "vllm"), default="auto",
                   help="sampling backend (default auto: vLLM on a CUDA GPU when installed)")
    p.add_argument("--method", choices=("dpo", "simpo"), default="simpo", help="training method (default simpo)")
    p.add_argument("--preset", default=None, help="training preset (default: the method's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="repeatable training setting, the same for every run (e.g. max_steps=20)")
    p.add_argument("--weight", type=float, default=DEFAULT_PARAMS.weight,
                   help=f"w in M_AP = z(m_ex) - w*z(|m_im|) (default {DEFAULT_PARAMS.weight})")
    p.add_argument("--signed", action="store_true", help="use m_im instead of |m_im| (signed variant)")
    p.add_argument("--device", default=None, help="auto|cpu|cuda (default auto)")
    p.add_argument("--detach", action="store_true", help="submit and return; run the same command again to follow")
    p.add_argument("--yes", "-y", action="store_true", help="start without asking")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the final table as JSON here")
    p.set_defaults(func=cmd_selfplay)


def spec_from_args(ws: Workspace, args: argparse.Namespace) -> Any:
    from marginlens.core.selfplay.selfplay_spec import build_selfplay_spec, evolve_settings, sampling_settings
    from marginlens.core.training.settings import parse_overrides

    return build_selfplay_spec(
        ws, args.name, annotate=with_base_url(args.annotate, args.annotate_url, "--annotate-url"),
        eval=with_base_url(args.eval, args.eval_url, "--eval-url"), policy=args.policy, evolver=args.evolver,
        evolver_url=args.evolver_url, evolver_key_env=args.evolver_key_env, evolver_max_calls=args.evolver_max_calls,
        iterations=args.iterations, metrics=args.metrics.split(","), seeds=args.seeds,
        ratio=args.ratio, weight=args.weight, signed=args.signed, strategies=args.strategies,
        max_prompts=args.max_prompts,
        sampling=sampling_settings(args.n, args.temperature, args.top_p, args.max_new_tokens),
        evolve=evolve_settings(args.evolve_max_new_tokens, args.max_ratio), backend=args.backend,
        eval_set=args.eval_set, method=args.method, preset=args.preset, overrides=parse_overrides(args.overrides),
        device=args.device, profile=args.profile, filter_prompt=args.filter_prompt, train_size=args.train_size)


def cmd_selfplay(args: argparse.Namespace) -> int:
    from marginlens.core.cli.follow import follow
    from marginlens.core.job_status import JobState
    from marginlens.core.jobs import Job, job_id_for
    from marginlens.core.run_estimate import estimate_vs_actual, record_estimate
    from marginlens.core.selfplay.selfplay_job import selfplay_results, submit_selfplay
    from marginlens.core.selfplay.selfplay_results import table_lines
    from marginlens.core.selfplay.selfplay_spec import plan_selfplay

    ws = Workspace.resolve(args.workspace)
    spec = spec_from_args(ws, args)
    existing = Job(ws.jobs_dir / job_id_for("selfplay", spec.to_params()))
    known = (existing.dir / "spec.json").exists()
    plan = None
    if not known or existing.status().state is not JobState.DONE:
        plan = plan_selfplay(ws, spec)
        print(f"self-play on {args.name!r} from {spec.policy}: {', '.join(spec.metrics)} x seeds "
              f"{', '.join(map(str, spec.seeds))}, annotated by {spec.annotator.label}, evaluated by "
              f"{spec.evaluator.label}")
        for line in plan.lines():
            print(f"  {line}")
        if not known and not args.yes and not confirm_start("the self-play run"):
            print("not started")
            return 1
    job = submit_selfplay(ws, spec)
    if not known and plan is not None:
        record_estimate(job.dir, plan.estimate)
    print(f"self-play job {job.id}: {job.dir / 'results'}", flush=True)
    if args.detach:
        return 0
    code = follow(job)
    table = selfplay_results(job)
    if table:
        print("\n".join(table_lines(table)))
        for line in estimate_vs_actual(job.dir):
            print(f"  {line}")
        if args.json:
            write_json(Path(args.json).expanduser(), {**table, "selfplay_job": job.id, "spec": spec.to_params()})
            print(f"wrote {args.json}")
    return code
