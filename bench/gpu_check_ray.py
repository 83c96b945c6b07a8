"""bench/gpu_check.py's "ray" section: the Ray engine on one GPU against the local engine.

The same pairs, the same model, scored twice through `marginlens score`: the local engine, then
`--engine ray --ray-actors 1` (a local Ray started for the job; its one actor takes the GPU). Reports
both wall times and pairs/s (a job's wall time includes its model load and, for Ray, Ray's start) and
whether the tables are equal within bf16 rounding (as the "processes" section: relative to |logp|), with
identical token counts. Needs the `ray` extra; without it the section fails saying so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def ray_engine(report: Any, args: Any, deadline: float) -> None:
    from marginlens.core.jobs import list_jobs
    from marginlens.core.scoring.ray_cluster import check_installed
    from marginlens.core.workspace import Workspace

    from bench.gpu_check_sections import pairs_dataset, scored_table, small_model

    check_installed()
    folder, kind = small_model(args)
    n = 16 if args.dry_run else 1024
    tables: dict[str, dict[str, dict]] = {}
    for engine in ("local", "ray"):
        ws = Workspace(Path(args.workdir) / f"ws-ray-{engine}")
        rows, data = pairs_dataset(args, ws, n)
        command = ["score", "pairs", "--workspace", str(ws.root), "--policy", str(folder), "--device", args.device,
                   "--max-length", "512", "--max-prompt-length", "256", "--engine", engine]
        if engine == "ray":
            command += ["--ray-actors", "1"]
            os.environ.setdefault("MARGINLENS_RAY_DASHBOARD", "0")  # the CLI's job worker inherits it
        seconds, _, tables[engine] = scored_table(ws, command, deadline)
        extra = list_jobs(ws, "score")[0].status().extra or {}
        report.put("ray", **{f"seconds_{engine}": seconds, f"pairs_per_s_{engine}": len(rows) / seconds},
                   model_kind=kind, data=data, pairs=len(rows))
        if engine == "ray":
            report.put("ray", actors_seen=extra.get("actors_seen"), blocks=extra.get("blocks_done"))
    local, ray = tables["local"], tables["ray"]
    rel, absolute = (1e-5, 1e-4) if args.device == "cpu" else (0.01, 0.5)
    worst = max((abs(local[k][s] - ray[k][s]) / (absolute + rel * abs(local[k][s]))
                 for k in local for s in ("chosen_logp", "rejected_logp")), default=0.0)
    same_counts = all((local[k]["chosen_ntok"], local[k]["rejected_ntok"]) == (ray[k]["chosen_ntok"], ray[k]["rejected_ntok"])
                      for k in local)
    equal = sorted(local) == sorted(ray) and same_counts and worst <= 1
    report.put("ray", equal_to_local=equal, tolerance=f"{absolute} + {rel} * |logp|",
               logp_max_abs_diff=max((abs(local[k][s] - ray[k][s]) for k in local
                                      for s in ("chosen_logp", "rejected_logp")), default=0.0),
               ray_over_local=report.sections["ray"]["seconds_ray"] / report.sections["ray"]["seconds_local"])
    if not equal:
        report.put("ray", status="failed", error="the Ray engine's table differs from the local engine's")
