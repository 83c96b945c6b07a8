"""The "score" job's worker (core.jobs.KINDS["score"]): score a shard of a dataset, task by task.

Submitting is core.scoring.score_submit; what a task is, core.scoring.score_spec; the scorers,
core.scoring.scorers. This module never names a scorer.

Every rank scores pairs[rank::world] in fixed chunks; each chunk is prepared (tokenized), planned
into batches and scored the same way every time, and results go to results/FINGERPRINT/part-rankR-*
(core.scoring.score_parts). A resumed job skips every batch whose pair ids are all written, and
sets its scorer up with the plan settings of the first run (plan-rankR.json), so it computes exactly
the batches an uninterrupted run would have computed and ends with identical numbers. When all ranks
have marked a task finished, rank 0 merges the parts by pair_id into the score table.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from marginlens.core import jobs
from marginlens.core.atomic import read_json, write_json
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.score_parts import PartWriter, merge_parts, written_ids
from marginlens.core.scoring.score_progress import ShardProgress
from marginlens.core.scoring.score_spec import ScoreJobParams, Task
from marginlens.core.scoring.score_submit import save_task_table, table_current
from marginlens.core.scoring.score_tables import score_manifest
from marginlens.core.scoring.scorers import PairBatch, RunOptions, scored_rows

CHUNK_PAIRS = 1024


def _rank_device(device: str, ctx: jobs.JobContext) -> str:
    """Under scale-out each rank takes its own GPU."""
    if device.startswith("cuda") and ctx.world_size > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', ctx.rank))}"
    return device


def run(ctx: jobs.JobContext) -> dict[str, Any]:
    """Job entry point: score this rank's shard for every task; rank 0 writes the tables."""
    params = ScoreJobParams.from_json(ctx.params)
    ws, dataset = ctx.workspace, params.dataset
    if ws.dataset_manifest(dataset).get("fingerprint") != params.dataset_fingerprint:
        raise MarginLensError(f"dataset {dataset!r} was re-imported after this job was submitted; submit again")
    pairs = ws.load_pairs(dataset)
    shard = list(range(ctx.rank, len(pairs), ctx.world_size))
    options = params.run_options(_rank_device(params.device, ctx))
    progress = ShardProgress(ctx, len(shard) * len(params.tasks))
    progress.add(0)
    summary: dict[str, Any] = {"dataset": dataset, "tables": {}, "truncated": {}}
    for task in params.tasks:
        folder = ctx.results_dir / task.fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        if table_current(ws, dataset, task.fingerprint, params.dataset_fingerprint):
            progress.add(len(shard), computed=False)
        else:
            _score_shard(ctx, task, options, pairs, shard, folder, progress)
            write_json(folder / f"finished-rank{ctx.rank}.json", {"pairs": len(shard)})
            if ctx.is_main:
                _merge(ctx, params, task, pairs, folder)
                progress.add(0, computed=False)  # all ranks finished: report their final counts
        manifest = score_manifest(ws, dataset, task.fingerprint) or {}
        summary["tables"][task.role] = task.fingerprint
        summary["truncated"][task.role] = manifest.get("spec", {}).get("truncated_pairs")
    return summary


def _set_up(ctx: jobs.JobContext, task: Task, options: RunOptions, folder: Path, n_pairs: int) -> None:
    scorer = task.scorer
    what = f"model {scorer.model}" if scorer.model else f"scorer {scorer.source}"
    ctx.log(f"loading {task.role} {what}" + (f" on {options.device}" if scorer.needs_device else ""))
    # The batch plan must be the same on every resume for identical numbers: keep the first run's settings.
    plan_path = folder / f"plan-rank{ctx.rank}.json"
    settings = read_json(plan_path)
    scorer.setup(dataclasses.replace(options, **settings) if settings else options)
    if settings is None:
        settings = scorer.plan_settings()
        write_json(plan_path, settings)
    ctx.log(f"scoring {n_pairs} pairs" + "".join(f", {k.replace('_', ' ')} {v}" for k, v in settings.items()))


def _score_shard(ctx: jobs.JobContext, task: Task, options: RunOptions, pairs: Any, shard: list[int],
                 folder: Path, progress: ShardProgress) -> None:
    scorer = task.scorer
    written = written_ids(folder)
    writer = PartWriter(folder, ctx.rank, scorer.output_schema())
    columns = list(dict.fromkeys(["pair_id", *scorer.reads]))
    ready = False
    truncated = 0
    for start in range(0, len(shard), CHUNK_PAIRS):
        ctx.check_cancel()
        chunk = pairs.select(shard[start : start + CHUNK_PAIRS])
        ids = list(chunk["pair_id"])
        if all(pid in written for pid in ids):
            progress.add(len(ids), computed=False)
            continue
        if not ready:
            _set_up(ctx, task, options, folder, len(shard))
            progress.begin()
            ready = True
        rows = chunk.select_columns(columns).to_list()
        prepared = scorer.prepare(rows)
        for indices in scorer.plan(prepared):
            ctx.check_cancel()
            if all(ids[i] in written for i in indices):
                progress.add(len(indices), computed=False)
                continue
            batch = PairBatch.take(indices, ids, rows, prepared)
            tokens = scorer.n_tokens(batch)
            new = [row for row in scored_rows(scorer, batch) if row["pair_id"] not in written]
            writer.add(new)
            written.update(row["pair_id"] for row in new)
            truncated += sum(bool(row["truncated"]) for row in new)
            progress.add(len(indices), tokens, task=task.role)
    writer.flush()
    if ready:
        ctx.log(f"{task.role}: scored this rank's shard ({truncated} newly scored pairs truncated)")


def _merge(ctx: jobs.JobContext, params: ScoreJobParams, task: Task, pairs: Any, folder: Path) -> None:
    """Rank 0: wait until every rank finished this task, then join the parts into the score table."""
    import pyarrow.compute as pc

    while len(list(folder.glob("finished-rank*.json"))) < ctx.world_size:
        ctx.check_cancel()
        time.sleep(0.2)
    table, missing = merge_parts(folder, task.scorer.output_schema(), pairs["pair_id"])
    if missing:
        raise MarginLensError(f"{missing} pairs have no {task.role} scores after all ranks finished")
    n_truncated = int(pc.sum(table.column("truncated")).as_py() or 0)
    save_task_table(ctx.workspace, params.dataset, params.dataset_fingerprint, task, table,
                    truncated_pairs=n_truncated)
    ctx.log(f"{task.role}: wrote score table {task.fingerprint} ({table.num_rows} pairs, {n_truncated} truncated)")
