"""Submitting a scoring: `submit_scoring(ws, ScoreSpec(...))`, the one call for UIs and scripts.

It plans the spec's tasks (core.scoring.score_spec). A task whose score table already exists for the
current dataset is a cache hit: no job, no model load. Inline scorers (dataset columns: reading two
numbers per row needs no job) are computed right here. The rest go to one "score" job
(core.scoring.score_job), joined rather than duplicated when the same spec is submitted again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from marginlens.core import jobs
from marginlens.core.data.pair_sample import DEFAULT_SEED, sample_positions
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.score_parts import unique_by_pair_id
from marginlens.core.scoring.score_spec import ScoreJobParams, ScoreSpec, Task, plan_tasks
from marginlens.core.scoring.score_tables import (
    load_score_table,
    save_score_table,
    score_manifest,
    score_table_rows,
    table_lock,
)
from marginlens.core.scoring.scorers import PairBatch, RunOptions, scored_rows
from marginlens.core.workspace import Workspace


def table_current(ws: Workspace, dataset: str, fingerprint: str, dataset_fp: str | None) -> bool:
    """A finished table under `fingerprint`, computed on the dataset's current import."""
    manifest = score_manifest(ws, dataset, fingerprint)
    return bool(manifest) and manifest.get("spec", {}).get("dataset_fingerprint") == dataset_fp


def scored_ids(ws: Workspace, dataset: str, fingerprint: str, dataset_fp: str | None) -> set[str]:
    """Pair ids the current table under `fingerprint` holds (a sampled scoring holds some of the pairs)."""
    if not table_current(ws, dataset, fingerprint, dataset_fp):
        return set()
    return set(load_score_table(ws, dataset, fingerprint, columns=["pair_id"]).column("pair_id").to_pylist())


def save_task_table(ws: Workspace, dataset: str, dataset_fp: str | None, task: Task, table: Any,
                    **spec: Any) -> None:
    """The task's score table with its manifest: what was hashed, the role, the dataset it was computed on."""
    save_score_table(ws, dataset, task.fingerprint, task.scorer.table_kind, table, task.scorer.source,
                     {**task.scorer.fingerprint_inputs(), "role": task.role, "dataset_fingerprint": dataset_fp,
                      **spec}, schema=task.scorer.output_schema())


@dataclass
class ScoringHandle:
    """What `submit_scoring` returns: the tables (by role) and the job computing the missing ones."""

    workspace: Workspace
    dataset: str
    fingerprints: dict[str, str]
    cached: list[str]
    job: jobs.Job | None
    targeted: int | None = None  # pairs this scoring covers: the sample's size, or the whole dataset's
    total: int | None = None  # pairs in the dataset

    def progress(self) -> jobs.JobStatus:
        """The job's status (pairs done of total, rate, ETA; extra: tokens_per_s, task); done when all cached."""
        if self.job is None:
            return jobs.JobStatus(jobs.JobState.DONE, done=1, total=1, message="all score tables cached")
        return self.job.status()


def submit_scoring(ws: Workspace, spec: ScoreSpec, launcher: list[str] | None = None,
                   env: dict[str, str] | None = None) -> ScoringHandle:
    """Start (or join, or skip when cached) the scoring of `spec.dataset`. Returns at once."""
    manifest = ws.dataset_manifest(spec.dataset)
    dataset_fp = manifest.get("fingerprint")
    tasks = plan_tasks(spec)
    fingerprints = {t.role: t.fingerprint for t in tasks}
    pair_ids = list(ws.load_pairs(spec.dataset)["pair_id"])
    targets = {pair_ids[i] for i in sample_positions(pair_ids, spec.sample, spec.seed)}
    cached = [t.role for t in tasks if _covers(ws, spec.dataset, t.fingerprint, dataset_fp, targets, len(pair_ids))]
    todo = [t for t in tasks if t.role not in cached]
    for task in [t for t in todo if t.scorer.inline]:
        _score_inline(ws, spec.dataset, dataset_fp, task)
        cached.append(task.role)
    todo = [t for t in todo if not t.scorer.inline]
    job = None
    if todo:
        params = dataclasses.replace(ScoreJobParams.for_tasks(spec, dataset_fp, todo),
                                     sample=spec.sample if spec.sample and spec.sample < len(pair_ids) else None,
                                     seed=spec.seed if spec.sample and spec.sample < len(pair_ids) else DEFAULT_SEED)
        job = jobs.submit(ws, "score", params.to_json(), env=env, launcher=launcher)
    return ScoringHandle(ws, spec.dataset, fingerprints, cached, job, len(targets), len(pair_ids))


def _covers(ws: Workspace, dataset: str, fingerprint: str, dataset_fp: str | None, targets: set[str],
            n_pairs: int) -> bool:
    """The current table holds every targeted pair; one row per pair, so a full-size table holds all."""
    if table_current(ws, dataset, fingerprint, dataset_fp) and score_table_rows(ws, dataset, fingerprint) == n_pairs:
        return True
    return targets <= scored_ids(ws, dataset, fingerprint, dataset_fp)


def _score_inline(ws: Workspace, dataset: str, dataset_fp: str | None, task: Task) -> None:
    import pyarrow as pa

    scorer = task.scorer
    scorer.setup(RunOptions(dataset=dataset))
    pairs = ws.load_pairs(dataset)
    rows = pairs.select_columns(list(dict.fromkeys(["pair_id", *scorer.reads]))).to_list()
    ids = [r["pair_id"] for r in rows]
    prepared = scorer.prepare(rows)
    out: list[dict[str, Any] | None] = [None] * len(rows)
    for indices in scorer.plan(prepared):
        for i, row in zip(indices, scored_rows(scorer, PairBatch.take(indices, ids, rows, prepared)), strict=True):
            out[i] = row
    if any(row is None for row in out):
        raise MarginLensError(f"scorer {scorer.name!r} planned batches that leave out some of the pairs")
    table = pa.Table.from_pylist(out, schema=scorer.output_schema())
    with table_lock(ws, dataset, task.fingerprint):  # not between a score job's read and write of the table
        save_task_table(ws, dataset, dataset_fp, task, unique_by_pair_id(table))
