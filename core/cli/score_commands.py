"""`marginlens score`: score a dataset as a background job, and follow it (core.cli.follow)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from marginlens.core.workspace import Workspace

if TYPE_CHECKING:
    from marginlens.core.jobs import Job
    from marginlens.core.scoring.score_submit import ScoringHandle


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from marginlens.core.scoring.chat_templates import BUILTIN_TEMPLATES
    from marginlens.core.scoring.models import DEFAULT_POLICY, DTYPES
    from marginlens.core.scoring.scorers import explicit_scorers
    from marginlens.core.scoring.tokenization import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PROMPT_LENGTH, MODES

    p = sub.add_parser("score", parents=[common], help="score a dataset's pairs (implicit and explicit margins)")
    p.add_argument("name", help="dataset name in the workspace")
    p.add_argument("--policy", default=DEFAULT_POLICY,
                   help=f"causal LM (Hub id or folder) for the implicit margin (default {DEFAULT_POLICY}); "
                        "'none' to skip")
    p.add_argument("--reference", default=None, help="reference model for the DPO-form implicit margin")
    explicit = p.add_mutually_exclusive_group()
    for scorer in explicit_scorers():  # one flag per explicit-margin scorer (core.scoring.scorers)
        option = scorer.option
        explicit.add_argument(option.flag, dest=f"explicit_{scorer.name}", default=None, metavar=option.metavar,
                              help=option.help)
    p.add_argument("--batch-size", default="auto", help="most pairs per batch, or 'auto' (default)")
    p.add_argument("--token-budget", type=int, default=None, help="padded tokens per batch (default: from the device)")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    p.add_argument("--max-prompt-length", type=int, default=DEFAULT_MAX_PROMPT_LENGTH)
    p.add_argument("--mode", choices=MODES, default="clean",
                   help="tokenisation: clean (default) or reference (SimPO's preprocessing, to match the paper)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="what the models run in; auto (default): bfloat16 on CUDA and on CPUs with native bf16 "
                        "matmul (AMX, AVX512-BF16), else float32; either way logits become float32 and log-probs "
                        "are summed in float64")
    p.add_argument("--trust-remote-code", action="append", default=[], metavar="MODEL",
                   help="allow this one model's own code (e.g. ArmoRM); repeat per model; off by default")
    p.add_argument("--chat-template", default=None, metavar="NAME|FILE",
                   help="chat template replacing the policy's and reference's own: a built-in one "
                        f"({', '.join(BUILTIN_TEMPLATES)}: SimPO's Gemma configs) or a Jinja file; its text is "
                        "part of the tables' fingerprints")
    rating = p.add_argument_group("LLM rating (--llm-rating MODEL)")
    rating.add_argument("--rating-url", default=None, metavar="URL",
                        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: api.openai.com); "
                             "the key comes from OPENAI_API_KEY")
    rating.add_argument("--rating-max-calls", type=int, default=None, metavar="N",
                        help="most requests this job may send (retries count); ratings already paid for are free")
    rating.add_argument("--rating-max-tokens", type=int, default=None, metavar="N", help="token budget of this job")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="score a seeded sample of N pairs (the same N every time; a larger N adds to them)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--processes", type=int, default=1,
                   help="data-parallel worker processes (one per GPU) under accelerate launch")
    engine = p.add_argument_group("engine (docs/RAY.md)")
    engine.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local (default): this machine; ray: an actor pool on a Ray cluster, same tables")
    engine.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="the Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started for the job)")
    engine.add_argument("--ray-actors", type=int, default=None, metavar="N",
                        help="actors in the pool (default: one per GPU of the cluster, else one per CPU)")
    p.add_argument("--detach", action="store_true", help="return at once; follow later with `marginlens jobs follow JOB_ID`")
    p.set_defaults(func=cmd_score)


def _spec(args: argparse.Namespace):
    from marginlens.core.errors import MarginLensError
    from marginlens.core.scoring.chat_templates import read_chat_template
    from marginlens.core.scoring.score_spec import ScoreSpec
    from marginlens.core.scoring.scorers import explicit_scorers

    batch = args.batch_size
    if batch != "auto":
        try:
            batch = int(batch)
        except ValueError:
            raise MarginLensError(f"--batch-size must be 'auto' or a positive integer, not {batch!r}") from None
        if batch < 1:
            raise MarginLensError(f"--batch-size must be 'auto' or a positive integer, not {batch}")
    policy = None if (args.policy or "").lower() == "none" else args.policy
    given = [(s.name, getattr(args, f"explicit_{s.name}")) for s in explicit_scorers()
             if getattr(args, f"explicit_{s.name}") is not None]  # at most one: a mutually exclusive group
    explicit, value = given[0] if given else (None, None)
    return ScoreSpec(dataset=args.name, policy=policy, reference=args.reference, explicit=explicit,
                     explicit_value=value, device=args.device, max_length=args.max_length,
                     max_prompt_length=args.max_prompt_length, mode=args.mode, batch_size=batch,
                     token_budget=args.token_budget, trust_remote_code=list(args.trust_remote_code),
                     chat_template=read_chat_template(args.chat_template) if args.chat_template else None,
                     scorer_options=_rating_options(args, explicit))


def _rating_options(args: argparse.Namespace, explicit: str | None) -> dict[str, object]:
    from marginlens.core.errors import MarginLensError

    options = {"base_url": args.rating_url, "max_calls": args.rating_max_calls, "max_tokens": args.rating_max_tokens}
    options = {k: v for k, v in options.items() if v is not None}
    if options and explicit != "llm_rating":
        raise MarginLensError("--rating-url and --rating-max-* go with --llm-rating MODEL")
    if explicit == "llm_rating" and getattr(args, "processes", 1) > 1:
        from marginlens.core.scoring.llm_rating import WORLD_REFUSAL

        raise MarginLensError(WORLD_REFUSAL)
    return options


def _launcher(processes: int) -> list[str] | None:
    if processes <= 1:
        return None
    # --multi_gpu: without it accelerate starts ONE process when it sees fewer than two GPUs; on a CPU-only host
    # too it is what starts N ranks (--cpu starts one). Port 0: a free one, so two scale-out jobs can run at once.
    # The rest are accelerate's defaults, given so that it does not warn about each in the job's log.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--main_process_port", "0", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _engine_env(args: argparse.Namespace) -> dict[str, str] | None:
    """The worker's environment for `--engine` (core.scoring.ray_cluster): the engine is this run's choice,
    not the job's, so a job started on one engine resumes on the other."""
    from marginlens.core.errors import MarginLensError
    from marginlens.core.scoring.ray_cluster import engine_env

    if args.engine == "local":
        if args.ray_address or args.ray_actors:
            raise MarginLensError("--ray-address and --ray-actors go with --engine ray")
        return engine_env("local")
    if args.processes > 1:
        raise MarginLensError("--engine ray sizes its own pool (--ray-actors); leave out --processes")
    return engine_env("ray", args.ray_address, args.ray_actors, args.device)


def cmd_score(args: argparse.Namespace) -> int:
    from marginlens.core.scoring.score_submit import submit_scoring

    ws = Workspace.resolve(args.workspace)
    spec = dataclasses.replace(_spec(args), sample=args.sample, seed=args.seed)
    spec = dataclasses.replace(spec, dtype=args.dtype)
    handle = submit_scoring(ws, spec, launcher=_launcher(args.processes), env=_engine_env(args))
    if handle.targeted is not None and handle.targeted < (handle.total or 0):
        print(f"   sample: {handle.targeted} of {handle.total} pairs (seed {args.seed})")
    dtypes = _dtypes(ws, handle)
    for role, fingerprint in handle.fingerprints.items():
        dtype = f"  {dtypes[role]}" if role in dtypes else ""
        print(f"{role:>9}: {fingerprint}{dtype}{'  (cached)' if role in handle.cached else ''}")
    if handle.job is None:
        return 0
    print(f"job {handle.job.id}  (log: {handle.job.log_path})")
    if args.engine == "ray":
        import os

        print(f"   engine: ray at {args.ray_address or os.environ.get('RAY_ADDRESS') or 'a local Ray started for the job'}")
    if args.detach:
        return 0
    return follow_job(handle.job)


def _dtypes(ws: Workspace, handle: ScoringHandle) -> dict[str, str]:
    """Each model role's dtype, from the job's task or, for a cached table, its manifest."""
    from marginlens.core.scoring.score_tables import score_manifest

    tasks = handle.job.spec.get("params", {}).get("tasks", []) if handle.job is not None else []
    inputs = {t["role"]: t.get("scorer") or {} for t in tasks}
    for role, fingerprint in handle.fingerprints.items():
        if role not in inputs:
            inputs[role] = (score_manifest(ws, handle.dataset, fingerprint) or {}).get("spec") or {}
    return {role: str(found["dtype"]) for role, found in inputs.items() if found.get("dtype")}


def follow_job(job: Job) -> int:
    from marginlens.core.cli.follow import follow

    code = follow(job)
    if code == 0:
        print("done")
    return code
