"""The "score" job's worker (core.jobs.KINDS["score"]): score a shard of a dataset, task by task.

Submitting is core.scoring.score_submit; what a task is, core.scoring.score_spec; the scorers,
core.scoring.scorers. This module never names a scorer.

Every rank scores pairs[rank::world] in fixed chunks; each chunk is prepared (tokenized), planned
into batches and scored the same way every time, and results go to results/FINGERPRINT/part-rankR-*
(core.scoring.score_parts). A resumed job scores the pairs its first start chose (todo.json in the
same folder; another job may have grown the table since), skips every batch whose pair ids are all
written, and sets its scorer up with the plan settings of the first run (plan-rankR.json), so it
computes exactly the batches an uninterrupted run would have computed and ends with identical numbers.
When all ranks have marked a task finished, rank 0 merges the parts by pair_id into the score table,
under the table's lock (core.scoring.score_tables.table_lock).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from marginlens.core import jobs
from marginlens.core.atomic import create_json, read_json, write_json
from marginlens.core.data.pair_sample import sample_positions
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring import ray_cluster, ray_engine
from marginlens.core.scoring.score_parts import (
    PartWriter,
    in_dataset_order,
    merge_parts,
    read_kept_json,
    unique_by_pair_id,
    written_ids,
)
from marginlens.core.scoring.score_progress import ShardProgress
from marginlens.core.scoring.score_spec import ScoreJobParams, Task
from marginlens.core.scoring.score_submit import save_task_table, scored_ids, table_current
from marginlens.core.scoring.score_tables import load_score_table, score_manifest, table_lock
from marginlens.core.scoring.scorers import PairBatch, RunOptions, scored_rows
from marginlens.core.workspace import Workspace

CHUNK_PAIRS = 1024


def _rank_device(device: str, ctx: jobs.JobContext) -> str:
    """Under scale-out each rank takes its own GPU; with more ranks than GPUs, ranks share them round-robin
    (two ranks on one GPU overlap one's host work with the other's kernels)."""
    if device.startswith("cuda") and ctx.world_size > 1:
        import torch

        local = int(os.environ.get("LOCAL_RANK", ctx.rank))
        return f"cuda:{local % max(1, torch.cuda.device_count())}"
    return device


def run(ctx: jobs.JobContext) -> dict[str, Any]:
    """Job entry point: score this rank's shard for every task; rank 0 writes the tables."""
    params = ScoreJobParams.from_json(ctx.params)
    ws, dataset = ctx.workspace, params.dataset
    if ws.dataset_manifest(dataset).get("fingerprint") != params.dataset_fingerprint:
        raise MarginLensError(f"dataset {dataset!r} was re-imported after this job was submitted; submit again")
    pairs = ws.load_pairs(dataset)
    pair_ids = list(pairs["pair_id"])
    targets = sample_positions(pair_ids, params.sample, params.seed)
    todo = {t.fingerprint: _todo(ctx, params, t, pair_ids, targets) for t in params.tasks}
    options = params.run_options(_rank_device(params.device, ctx))
    progress = ShardProgress(ctx, sum(len(t[ctx.rank::ctx.world_size]) for t in todo.values()))
    progress.add(0, kept_outputs=False)  # a previous run's verdict on its outputs (below) is not this run's
    summary: dict[str, Any] = {"dataset": dataset, "tables": {}, "truncated": {}}
    warnings: list[str] = []
    for task in params.tasks:
        folder = ctx.results_dir / task.fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        shard = todo[task.fingerprint][ctx.rank::ctx.world_size]
        if todo[task.fingerprint]:
            # the engine is this run's choice, outside the params: the same job resumes on either
            score_shard = ray_engine.score_shard if ray_cluster.requested() else _score_shard
            score_shard(ctx, task, options, pairs, shard, folder, progress)
            write_json(folder / f"finished-rank{ctx.rank}.json", {"pairs": len(shard)})
            if ctx.is_main:
                _merge(ctx, params, task, pair_ids, [pair_ids[i] for i in todo[task.fingerprint]], folder)
                figures = _table_figures(ctx, params, task, [pair_ids[i] for i in todo[task.fingerprint]],
                                         summary, warnings)
                progress.add(0, computed=False, **figures)  # all ranks finished: report their final counts
        manifest = score_manifest(ws, dataset, task.fingerprint) or {}
        summary["tables"][task.role] = task.fingerprint
        summary["truncated"][task.role] = manifest.get("spec", {}).get("truncated_pairs")
    if warnings:  # every table is written and kept; the job says plainly that they are mostly unusable
        progress.add(0, computed=False, kept_outputs=True)  # resuming would only say it again (core.cli.follow)
        raise MarginLensError(" ".join(warnings))
    return summary


def _table_figures(ctx: jobs.JobContext, params: ScoreJobParams, task: Task, todo_ids: list[str],
                   summary: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """A scorer's own counts over the pairs this job scored, from the merged table (so a resume that
    computed nothing counts them too): into the summary, and its warning, if any, into `warnings`. The
    LLM rating's valid and invalid ratings are such counts (core.scoring.llm_rating)."""
    summarize = getattr(task.scorer, "summarize", None)
    if summarize is None:
        return {}
    table = load_score_table(ctx.workspace, params.dataset, task.fingerprint)
    figures, warning = summarize(ctx.workspace.root, table, todo_ids, params.dataset)
    summary.setdefault("counts", {})[task.role] = figures
    if warning:
        warnings.append(warning)
    return figures


def _todo(ctx: jobs.JobContext, params: ScoreJobParams, task: Task, pair_ids: list[str],
          targets: Sequence[int]) -> list[int]:
    """The positions this job scores for `task`, chosen once by its first start: ranks that start while
    another job grows the table would otherwise slice different lists (leaving pairs to no rank), and a
    resume would score, and merge, other pairs than the start it continues."""
    path = ctx.results_dir / task.fingerprint / "todo.json"
    # a damaged list is quarantined and chosen again; merge_parts keeps only the pairs on the new one
    if read_kept_json(path, ctx.log, required=("positions",)) is None:
        create_json(path, {"positions": _unscored(ctx.workspace, params, task, pair_ids, targets)})
    return [int(i) for i in read_json(path)["positions"]]


def _unscored(ws: Workspace, params: ScoreJobParams, task: Task, pair_ids: list[str],
              targets: Sequence[int]) -> list[int]:
    """Positions of the targeted pairs the task's current table lacks: a larger sample after a smaller one,
    or the whole dataset after a sample, scores only the pairs not scored yet."""
    held = scored_ids(ws, params.dataset, task.fingerprint, params.dataset_fingerprint)
    return [int(i) for i in targets if pair_ids[i] not in held]


def _set_up(ctx: jobs.JobContext, task: Task, options: RunOptions, folder: Path, n_pairs: int) -> None:
    scorer = task.scorer
    what = f"model {scorer.model}" if scorer.model else f"scorer {scorer.source}"
    ctx.log(f"loading {task.role} {what}" + (f" on {options.device}" if scorer.needs_device else ""))
    # The batch plan must be the same on every resume for identical numbers: keep the first run's settings.
    plan_path = folder / f"plan-rank{ctx.rank}.json"
    settings = read_kept_json(plan_path, ctx.log)
    options = dataclasses.replace(options, workspace=str(ctx.workspace.root), state_dir=str(folder))
    scorer.setup(dataclasses.replace(options, **settings) if settings else options)
    if settings is None:
        settings = scorer.plan_settings()
        write_json(plan_path, settings)
    ctx.log(f"scoring {n_pairs} pairs" + "".join(f", {k.replace('_', ' ')} {v}" for k, v in settings.items()))


def _score_shard(ctx: jobs.JobContext, task: Task, options: RunOptions, pairs: Any, shard: list[int],
                 folder: Path, progress: ShardProgress) -> None:
    scorer = task.scorer
    written = written_ids(folder, ctx.log)  # a damaged part is quarantined: its pairs are scored again
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
        progress.planned(len(ids), scorer.n_tokens(PairBatch(ids, rows, prepared)))
        for indices in scorer.plan(prepared):
            ctx.check_cancel()
            batch = PairBatch.take(indices, ids, rows, prepared)
            tokens = scorer.n_tokens(batch)
            if all(ids[i] in written for i in indices):
                progress.add(len(indices), tokens, computed=False)
                continue
            new = [row for row in scored_rows(scorer, batch) if row["pair_id"] not in written]
            writer.add(new)
            written.update(row["pair_id"] for row in new)
            truncated += sum(bool(row["truncated"]) for row in new)
            figures = getattr(scorer, "progress_figures", None)  # a scorer's live counts (valid ratings)
            progress.add(len(indices), tokens, task=task.role, **(figures() if figures else {}))
    writer.flush()
    if ready:
        ctx.log(f"{task.role}: scored this rank's shard ({truncated} newly scored pairs truncated)")


def _merge(ctx: jobs.JobContext, params: ScoreJobParams, task: Task, pair_ids: list[str], todo_ids: list[str],
           folder: Path) -> None:
    """Rank 0: wait until every rank finished this task, then join the parts, and the pairs the current
    table already held, into the score table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    while len(list(folder.glob("finished-rank*.json"))) < ctx.world_size:
        ctx.check_cancel()
        time.sleep(0.2)
    schema = task.scorer.output_schema()
    table, missing = merge_parts(folder, schema, todo_ids, ctx.log)
    if missing:
        raise MarginLensError(f"{missing} pairs have no {task.role} scores after all ranks finished (a damaged "
                              f"part is moved to {ctx.job.dir / 'quarantine'}); resuming the job scores them")
    ws = ctx.workspace
    with table_lock(ws, params.dataset, task.fingerprint):  # the table as it is now, not as it was at start
        if table_current(ws, params.dataset, task.fingerprint, params.dataset_fingerprint):
            held = load_score_table(ws, params.dataset, task.fingerprint).select(schema.names).cast(schema)
            table = in_dataset_order(unique_by_pair_id(pa.concat_tables([held, table])), pair_ids)
        n_truncated = int(pc.sum(table.column("truncated")).as_py() or 0)
        save_task_table(ws, params.dataset, params.dataset_fingerprint, task, table, truncated_pairs=n_truncated,
                        scored_pairs=table.num_rows, dataset_pairs=len(pair_ids))
    ctx.log(f"{task.role}: wrote score table {task.fingerprint} ({table.num_rows} of {len(pair_ids)} pairs, "
            f"{n_truncated} truncated)")
