"""The Ray engine: a score task's pairs scored by an actor pool on a Ray cluster (Ray Data).

The job worker stays the driver (core.scoring.score_job dispatches here when core.scoring.ray_cluster
says the run asked for Ray). For one task it:

1. takes the job's to-do pairs (todo.json) less those already in the job's parts, from any earlier run on
   either engine, and cuts them into blocks of MARGINLENS_RAY_BLOCK_PAIRS pairs: a Ray Dataset whose
   blocks the driver puts into the object store (only pair_id and the columns the scorer reads);
2. maps the blocks through `ScorerActor` (core.scoring.ray_actor) with `map_batches`: a pool of actors,
   each loading the model once (one GPU per actor on a GPU cluster, one CPU otherwise);
3. streams the results back through the object store and writes them into the job's parts by pair_id
   (core.scoring.score_parts.PartWriter, as the local engine does); score_job then merges the parts into
   the score table exactly as for the local engine.

Results come back to the driver, which alone writes: no node needs the workspace, and a block computed
twice (a retried task after a lost node) is written once, because the driver skips pairs it has written.
Ray retries what a lost actor or node was doing (Ray Data restarts actors and retries their tasks); the
driver counts the blocks, the actors alive and their restarts into the job's progress for the panel.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from marginlens.core import jobs
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.ray_actor import ACTOR_COLUMN, TOKENS_COLUMN, ScorerActor
from marginlens.core.scoring.ray_cluster import RaySettings, cluster_size, connect, pool_facts
from marginlens.core.scoring.score_parts import PartWriter, read_kept_json, written_ids
from marginlens.core.scoring.score_progress import ShardProgress
from marginlens.core.scoring.score_spec import Task
from marginlens.core.scoring.scorers import RunOptions

FACTS_SECONDS = 2.0  # how often the driver reads the actor table (a GCS call) for the progress


def score_shard(ctx: jobs.JobContext, task: Task, options: RunOptions, pairs: Any, shard: list[int],
                folder: Path, progress: ShardProgress) -> None:
    """Score the pairs at positions `shard` of `pairs` that the job's parts lack, on Ray, into the parts."""
    import ray

    if ctx.world_size > 1:
        raise MarginLensError("the Ray engine runs in one driver process: score with --engine ray or with "
                              "--processes, not both")
    written = written_ids(folder, ctx.log)
    ids = list(pairs["pair_id"])
    pending = [i for i in shard if ids[i] not in written]
    progress.add(len(shard) - len(pending), computed=False)
    if not pending:
        return
    settings = RaySettings.from_env()
    started_here = not ray.is_initialized()
    where = connect(settings, ctx.log) if started_here else {"ray_address": "current", "ray_dashboard": None}
    try:
        _run(ctx, task, pairs, pending, folder, progress, settings, where, written)
        missing = sum(1 for i in pending if ids[i] not in written)
        if missing:
            raise MarginLensError(f"{missing} pairs came back from Ray without scores; resuming the job scores them")
    finally:
        if started_here:
            ray.shutdown()  # a local Ray started for the job stops with it; a cluster keeps running


def _blocks(pairs: Any, pending: list[int], columns: list[str], size: int) -> list[Any]:
    """The pending pairs' columns as Arrow tables of `size` rows: the Dataset's blocks."""
    table = pairs.flatten_indices().data.table if getattr(pairs, "_indices", None) is not None else pairs.data.table
    table = table.select(columns)
    return [table.take(pending[start : start + size]) for start in range(0, len(pending), size)]


def _run(ctx: jobs.JobContext, task: Task, pairs: Any, pending: list[int], folder: Path,
         progress: ShardProgress, settings: RaySettings, where: dict[str, Any], written: set[str]) -> None:
    import ray

    scorer = task.scorer
    columns = list(dict.fromkeys(["pair_id", *scorer.reads]))
    blocks = _blocks(pairs, pending, columns, settings.block_pairs)
    size, on_gpus = cluster_size(settings)
    size = min(size, len(blocks))
    # The first local run's batch settings, when there was one: a resume batches as that run did.
    plan = read_kept_json(folder / f"plan-rank{ctx.rank}.json", ctx.log)
    threads = None if on_gpus else 1
    ctx.log(f"ray: scoring {len(pending)} pairs in {len(blocks)} blocks with {size} "
            f"{'GPU' if on_gpus else 'CPU'} actors ({scorer.name}, {task.role})")
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False
    data_context.verbose_stats_logs = False
    dataset = ray.data.from_arrow(blocks)
    device = "cuda" if on_gpus else "cpu"
    scored = dataset.map_batches(
        ScorerActor, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
        fn_constructor_kwargs={"params": ctx.params, "role": task.role, "device": device, "settings": plan,
                               "threads": threads, "workspace": str(ctx.workspace.root), "state_dir": str(folder),
                               "world_size": size},
        compute=ray.data.ActorPoolStrategy(size=size), num_gpus=1 if on_gpus else 0, num_cpus=0 if on_gpus else 1,
    )
    writer = PartWriter(folder, ctx.rank, scorer.output_schema())
    names = scorer.output_schema().names
    figures: dict[str, Any] = {"engine": "ray", **where, "blocks_total": len(blocks), "blocks_done": 0,
                               "duplicate_pairs": 0, "actors_seen": 0}
    actors: set[str] = set()
    last_facts = 0.0
    try:
        for result in scored.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            ctx.check_cancel()
            progress.begin()
            actors.update(result.column(ACTOR_COLUMN).to_pylist())
            rows = result.select(names).to_pylist()
            new = [row for row in rows if row["pair_id"] not in written]
            writer.add(new)
            written.update(row["pair_id"] for row in new)
            figures["blocks_done"] += 1
            figures["duplicate_pairs"] += len(rows) - len(new)  # a retried block's pairs, written once
            figures["actors_seen"] = len(actors)
            if time.monotonic() - last_facts > FACTS_SECONDS:
                figures.update(pool_facts() or {})
                last_facts = time.monotonic()
            tokens = int(sum(v or 0 for v in result.column(TOKENS_COLUMN).to_pylist()))
            progress.add(len(new), tokens, task=task.role, **figures)
    finally:
        writer.flush()  # a cancelled or failing run keeps every pair it received
    figures.update(pool_facts() or {})
    progress.add(0, computed=False, **figures)
    ctx.log(f"ray: {task.role}: {figures['blocks_done']} blocks from {len(actors)} actors, "
            f"{figures.get('actor_restarts', 0)} actor restarts")
