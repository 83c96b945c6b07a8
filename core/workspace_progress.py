"""How far a dataset is along the M_AP loop: imported, explicit margin, implicit margin, audit, export.

The start page draws this as a checklist (each open step a button to the page that does it); it is computed
from the workspace alone (manifests, score tables, job folders, export manifests), so every user and every
tab sees the same. The margin frame is passed in, not read here: the dashboard keeps one cached per dataset,
and reading it again would cost seconds at a million pairs.

    progress = dataset_progress(ws, "hh", default_margins(ws, "hh"))
    [(s.key, s.state) for s in progress.steps]
    # [("import", "done"), ("explicit", "todo"), ("implicit", "partial"), ("audit", "todo"), ("export", "todo")]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from marginlens.core import jobs
from marginlens.core.audit.audit_job import list_audits
from marginlens.core.data.import_flags import flagged_pairs
from marginlens.core.job_status import JobState
from marginlens.core.scoring.llm_rating import is_rating_table
from marginlens.core.scoring.score_tables import score_manifest
from marginlens.core.selection.margin_sources import covered_sample, margin_sources
from marginlens.core.workspace import Workspace

StepState = Literal["done", "partial", "running", "todo"]
STEP_KEYS = ("import", "explicit", "implicit", "audit", "export")


@dataclass(frozen=True)
class Step:
    """One step of the loop: `detail` says what exists (or "none"), in plain words."""

    key: str
    state: StepState
    detail: str
    count: int | None = None  # pairs with this margin (margin steps), audits done, exports written
    total: int | None = None  # pairs in the dataset (margin steps)
    source: str | None = None  # the explicit margin's: "dataset" (its own scores), "rating" or "reward" (a table)
    sample: tuple[int, int | None] | None = None  # the seeded sample (N, seed) a partial margin covers; seed None: unknown

    @property
    def done(self) -> bool:
        return self.state == "done"


@dataclass(frozen=True)
class DatasetProgress:
    dataset: str
    pairs: int
    own_scores: bool  # the dataset was imported with explicit scores of its own
    steps: tuple[Step, ...]

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)


def _finite(frame: pd.DataFrame, column: str) -> int:
    if column not in frame:
        return 0
    return int(np.isfinite(frame[column].to_numpy(dtype=np.float64, na_value=np.nan)).sum())


def _model(ws: Workspace, dataset: str, fingerprint: str | None) -> str:
    manifest = score_manifest(ws, dataset, fingerprint) if fingerprint else None
    return str((manifest or {}).get("model") or fingerprint or "?")


def _live_roles(ws: Workspace, dataset: str) -> set[str]:
    """The roles (policy, reference, an explicit scorer's) of the dataset's scoring jobs still running."""
    roles: set[str] = set()
    for job in jobs.list_jobs(ws, "score"):
        params = job.spec.get("params", {})
        if params.get("dataset") == dataset and job.status().live:
            roles.update(str(t.get("role")) for t in params.get("tasks", []))
    return roles


def _coverage(count: int, total: int) -> StepState:
    return "done" if count >= total > 0 else "partial" if count else "todo"


def _explicit(ws: Workspace, dataset: str, frame: pd.DataFrame, own_scores: bool, running: bool) -> Step:
    total, count = len(frame), _finite(frame, "m_ex")
    reward_fp = frame.attrs.get("reward_fp")
    if count:
        kind = ("rating" if is_rating_table(reward_fp) else "reward") if reward_fp else "dataset"
        source = {"rating": "LLM rating by", "reward": "reward model"}.get(kind)
        what = f"{source} {_model(ws, dataset, reward_fp)}" if source else "the dataset's own scores"
        return Step("explicit", _coverage(count, total), f"{what}: {count:,} of {total:,} pairs", count, total, kind,
                    covered_sample(frame, "m_ex"))
    sources = margin_sources(frame)
    if sources.table and sources.table_values is not None:
        valid, asked = sources.table_values
        what = "rating" if is_rating_table(sources.table) else "reward"
        detail = (f"none usable: a {what} table exists ({_model(ws, dataset, sources.table)}), {valid:,} of "
                  f"{asked:,} {what}s valid")
    else:
        detail = "none: the dataset has no scores of its own" if not own_scores else "none"
    return Step("explicit", "running" if running else "todo", detail, 0, total)


def _implicit(ws: Workspace, dataset: str, frame: pd.DataFrame, running: bool) -> Step:
    total, count = len(frame), _finite(frame, "m_im")
    if not count:
        return Step("implicit", "running" if running else "todo", "none: no policy has scored this dataset", 0, total)
    form = "DPO" if frame.attrs.get("m_im_form") == "dpo" else "SimPO"
    detail = f"{_model(ws, dataset, frame.attrs.get('policy_fp'))} ({form} form): {count:,} of {total:,} pairs"
    state = _coverage(count, total)
    return Step("implicit", "running" if running and state != "done" else state, detail, count, total)


def _audit(ws: Workspace, dataset: str) -> Step:
    audits = list_audits(ws, dataset)
    states = [job.status().state for job in audits]
    done = sum(state is JobState.DONE for state in states)
    if any(state.live for state in states):
        return Step("audit", "running", f"an audit is running ({done} finished before)", done)
    if done:
        params = audits[states.index(JobState.DONE)].spec.get("params") or {}
        judge = (params.get("endpoint") or {}).get("model") or "?"
        return Step("audit", "done", f"{done} audit{'s' if done > 1 else ''}, newest judged by {judge}", done)
    return Step("audit", "todo", "none", 0)


def _export(ws: Workspace, dataset: str) -> Step:
    from marginlens.core.training.train_data import list_exports

    exports = [e for e in list_exports(ws) if e["dataset"] == dataset]
    if not exports:
        return Step("export", "todo", "none", 0)
    newest = exports[0]
    return Step("export", "done", f"{len(exports)} export{'s' if len(exports) > 1 else ''}, newest {newest['name']} "
                                  f"({int(newest['rows'] or 0):,} pairs)", len(exports))


def dataset_progress(ws: Workspace, dataset: str, frame: pd.DataFrame) -> DatasetProgress:
    """Every step's state for `dataset`, its margins read from `frame` (core.selection.margins.load_margins
    of the tables the pages use by default)."""
    manifest = ws.dataset_manifest(dataset)
    rows = manifest["rows"]
    own = bool(manifest.get("has_scores"))
    flagged = flagged_pairs(ws, dataset) if manifest.get("flagged") else 0
    imported = Step("import", "done", f"{rows['imported']:,} pairs from {str(manifest.get('source', '?')).rsplit('/', 1)[-1]} "
                                      f"({manifest.get('format', '?')}); {rows['rejected']:,} rows rejected"
                                      + (f", {flagged:,} kept with flags" if flagged else ""), rows["imported"])
    live = _live_roles(ws, dataset)
    return DatasetProgress(dataset, int(rows["imported"]), own, (
        imported,
        _explicit(ws, dataset, frame, own, bool(live - {"policy", "reference"})),
        _implicit(ws, dataset, frame, "policy" in live),
        _audit(ws, dataset),
        _export(ws, dataset),
    ))
