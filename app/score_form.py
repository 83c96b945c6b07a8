"""The Score page's logic: a ScoreSpec from form values, submit/cancel/resume, job and table rows.

Reads job folders only (core.jobs), so a refresh or a second tab shows the same running job and
submitting the same spec twice joins it (core.jobs ids are hashes of the spec).
"""

from __future__ import annotations

import time
from typing import Any

from marginlens.core import jobs
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.models import DEFAULT_POLICY
from marginlens.core.scoring.tokenization import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PROMPT_LENGTH, MODES
from marginlens.core.workspace import Workspace

POLL_SECONDS = 2.0
EXPLICIT_SOURCES = ("dataset", "columns", "reward_model")
EXPLICIT_LABELS = {"dataset": "dataset scores (as imported)", "columns": "score columns",
                   "reward_model": "reward model"}

__all__ = ["DEFAULT_MAX_LENGTH", "DEFAULT_MAX_PROMPT_LENGTH", "DEFAULT_POLICY", "MODES"]


def build_spec(dataset: str, policy: str, reference: str, source: str, explicit_value: str, device: str,
               max_length: int, max_prompt_length: int, mode: str):
    """A core.scoring.score_job.ScoreSpec from the form; one-line MarginLensError for inconsistent choices."""
    from marginlens.core.scoring.score_job import ScoreSpec

    if source not in EXPLICIT_SOURCES:
        raise MarginLensError(f"unknown explicit source {source!r} (expected one of {', '.join(EXPLICIT_SOURCES)})")
    value = explicit_value.strip()
    if source == "reward_model" and not value:
        raise MarginLensError("explicit source 'reward model': enter a reward model id or folder")
    return ScoreSpec(
        dataset=dataset, policy=policy.strip() or None, reference=reference.strip() or None,
        reward_model=value if source == "reward_model" else None,
        score_columns=(value or "score_chosen,score_rejected") if source == "columns" else None,
        device=device, max_length=int(max_length), max_prompt_length=int(max_prompt_length), mode=mode,
    )


def submit(ws: Workspace, spec: Any) -> str:
    """Start or join the job for `spec`; a one-line summary of what happened."""
    from marginlens.core.scoring.score_job import submit_scoring

    handle = submit_scoring(ws, spec)
    cached = ", ".join(handle.cached)
    if handle.job is None:
        return f"Nothing to compute: every table is already there ({cached})."
    return f"Scoring job {handle.job.id} is {handle.job.status()['state']}" + (f"; cached: {cached}" if cached else "")


def _job(ws: Workspace, job_id: str) -> jobs.Job:
    job = jobs.get_job(ws, job_id)
    if job.spec.get("kind") != "score":
        raise MarginLensError(f"job {job_id!r} is not a scoring job")
    return job


def cancel(ws: Workspace, job_id: str) -> None:
    _job(ws, job_id).cancel()


def resume(ws: Workspace, job_id: str) -> jobs.Job:
    """Resubmit the job's own spec: same id, and the worker skips every batch already written."""
    job = _job(ws, job_id)
    return jobs.submit(ws, "score", job.spec["params"])


def _eta(status: dict[str, Any], extra: dict[str, Any]) -> float | None:
    if extra.get("eta_s") is not None:
        return float(extra["eta_s"])
    return None


def job_rows(ws: Workspace, dataset: str) -> list[dict[str, Any]]:
    """The dataset's scoring jobs, newest first, with progress fields the page shows."""
    rows = []
    for job in jobs.list_jobs(ws, "score"):
        params = job.spec.get("params", {})
        if params.get("dataset") != dataset:
            continue
        status = job.status()
        extra = status.get("extra") or {}
        models = ", ".join(f"{t['role']}: {t.get('model') or t['scorer'].get('columns', '')}"
                           for t in params.get("tasks", []))
        rows.append({
            "job_id": job.id, "state": status.get("state"), "done": int(status.get("done") or 0),
            "total": status.get("total"), "tokens_per_s": extra.get("tokens_per_s"),
            "pairs_per_s": extra.get("pairs_per_s"), "eta_s": _eta(status, extra), "task": extra.get("task"),
            "message": status.get("message", ""), "models": models, "created": job.spec.get("created"),
            "log": job.log_tail(15),
        })
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} days"


def progress_text(row: dict[str, Any]) -> str:
    rate = f"{row['tokens_per_s']:,.0f} tokens/s" if row.get("tokens_per_s") else "— tokens/s"
    task = f" · {row['task']}" if row.get("task") else ""
    return f"{row['done']:,} / {row['total']:,} pairs · {rate} · ETA {_duration(row.get('eta_s'))}{task}"


def table_rows(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "fingerprint": m["fingerprint"], "kind": m["kind"], "model": m.get("model"), "rows": m.get("rows"),
        "role": (m.get("spec") or {}).get("role"), "truncated": (m.get("spec") or {}).get("truncated_pairs"),
        "created": m.get("created"),
    } for m in manifests]
