"""`marginlens train EXPORT [--method dpo|simpo] [--preset NAME] [--model M] [--set key=value ...]`.

Runs as a background "train" job (core.training.train_job) and follows it, printing one line per step.
Ctrl-C leaves the run going in the background (`marginlens jobs follow JOB_ID` comes back to it);
`--stop JOB_ID` or `marginlens jobs cancel JOB_ID` stops it at the next step with a checkpoint, and running
the same command again resumes it from there (the same settings are the same job). `--detach` returns at once.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marginlens.core.errors import MarginLensError
from marginlens.core.workspace import Workspace

if TYPE_CHECKING:
    from marginlens.core.jobs import Job, JobStatus


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train", parents=[common],
        help="train with DPO or SimPO (TRL) on an export, as a background job",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("export", nargs="?",
                   help="TRL-format data: a .jsonl/.json/.parquet export or a save_to_disk folder")
    p.add_argument("--method", choices=("dpo", "simpo"), default=None,
                   help="dpo: DPOTrainer; simpo: CPOTrainer, loss simpo (default: the --preset's method, else dpo, "
                        "as on the dashboard's Train page)")
    p.add_argument("--preset", default=None,
                   help="recipe to start from (default: dpo-paper / simpo-llama3-8b-instruct; see --list-presets)")
    p.add_argument("--model", default=None,
                   help="policy to train: a model folder or Hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="repeatable: any DPOConfig/CPOConfig field or MarginLens setting, e.g. learning_rate=5e-7, "
                        "max_steps=100, effective_batch_size=32, lora=true, num_processes=4, accelerate_config=zero3")
    p.add_argument("--device", default="auto", help="fit the defaults to auto|cpu|cuda (default auto)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings and TRL config; launch nothing")
    p.add_argument("--detach", action="store_true", help="submit and return; follow it later by running it again")
    p.add_argument("--stop", metavar="JOB_ID", default=None, help="stop a running training job (it checkpoints first)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.set_defaults(func=cmd_train)


def _fmt(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)


def _step_line(row: dict[str, Any], total: int | None) -> str:
    return (
        f"step {row.get('step')}/{total or '?'}  loss {_fmt(row.get('loss'))}  "
        f"margin {_fmt(row.get('rewards/margins'))}  acc {_fmt(row.get('rewards/accuracies'))}  "
        f"chosen {_fmt(row.get('rewards/chosen'))}  rejected {_fmt(row.get('rewards/rejected'))}  "
        f"lr {_fmt(row.get('learning_rate'))}  tok/s {_fmt(row.get('tokens_per_s'))}"
    )


def follow_job(job: Job) -> int:
    """Follow a train job: one stdout line per logged step, and the final model's folder at the end."""
    from marginlens.core.cli.follow import follow
    from marginlens.core.training import runs

    printed = 0

    def steps(status: JobStatus) -> list[str]:
        nonlocal printed
        rows = runs.read_metrics(job)[printed:]
        printed += len(rows)
        return [_step_line(row, status.total) for row in rows]

    code = follow(job, lines=steps)
    if code == 0:
        from marginlens.core.atomic import format_bytes

        result = job.result() or {}
        size = f" ({format_bytes(result['final_model_bytes'])})" if "final_model_bytes" in result else ""
        print(f"done: final model in {runs.final_model_path(job)}{size}")
        if result.get("removed_checkpoint_bytes"):
            print(f"removed its checkpoints ({format_bytes(result['removed_checkpoint_bytes'])}); "
                  "--set keep_checkpoints=true keeps them")
    return code


def cmd_train(args: argparse.Namespace) -> int:
    from marginlens.core import jobs
    from marginlens.core.training import presets, runs, settings
    from marginlens.core.training.runs import build_spec

    if args.list_presets:
        for name, preset in presets.list_presets().items():
            print(f"{name}  ({preset['method']}): {preset['description']}")
        return 0
    ws = Workspace.resolve(args.workspace)
    if args.stop:
        job = jobs.get_job(ws, args.stop)
        runs.checkpoints(job)  # refuses non-training jobs
        job.cancel()
        print(f"stop requested for {job.id}; it saves a checkpoint at its next step")
        return 0
    if not args.export:
        raise MarginLensError("train needs an EXPORT path: a file `marginlens select --out` wrote (a name under the "
                              "workspace's exports/ is enough), e.g. `marginlens train hh-map.jsonl`")
    export = Path(args.export).expanduser()
    if not export.exists() and not export.is_absolute() and (ws.exports_dir / export).exists():
        export = ws.exports_dir / export  # the name `marginlens select --out` gave, inside the workspace
    overrides = settings.parse_overrides(args.overrides)
    method = args.method or (presets.preset_method(args.preset) if args.preset else "dpo")
    spec = build_spec(str(export), method, preset=args.preset, model=args.model,
                               overrides=overrides, device=args.device)
    if args.dry_run:
        print(json.dumps(spec.to_params(), indent=2, sort_keys=True))
        print(settings.trl_config_text(spec, output_dir="OUTPUT_DIR"))
        return 0
    job = jobs.submit(ws, "train", spec.to_params(), launcher=settings.launcher_for(spec))
    print(f"training job {job.id}: {job.dir / 'results'}", flush=True)
    if args.detach:
        return 0
    return follow_job(job)
