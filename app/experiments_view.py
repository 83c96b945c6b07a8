"""The Experiments page's logic, without widgets: the form's training settings, the results table as a
frame (the audit's judge agreement beside each metric when an audit exists), the chart of mean and 95%
interval per metric with the baseline as a line, how an experiment run is labelled, and the plan and the
audit agreement cached across script reruns (keyed on what they read, so a changed input recomputes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from marginlens.core.experiments.experiment_results import AUDIT_SUBSETS, INTERVAL_METHOD, ONE_SEED
from marginlens.core.experiments.experiment_spec import ExperimentSpec
from marginlens.core.jobs import Job
from marginlens.core.run_estimate import finished_jobs
from marginlens.core.training.settings import parse_overrides
from marginlens.core.workspace import Workspace

BASELINE = "baseline (starting model)"

# what an empty training-settings box means, and an example that is visibly not a value in it
SETTINGS_PLACEHOLDER = "empty: the preset's settings. Example, not applied: max_steps=20"


def overrides_from_text(text: str) -> dict[str, Any]:
    """One key=value per line (blank lines and # comments skipped), as `--set` reads each."""
    lines = [line.strip() for line in (text or "").splitlines()]
    return parse_overrides([line for line in lines if line and not line.startswith("#")])


def job_label(job: Job) -> str:
    spec = ExperimentSpec.from_params(job.spec["params"])
    return (f"{spec.dataset}: {', '.join(spec.metrics)} x {len(spec.seeds)} seeds, {spec.method}, "
            f"{spec.evaluator.label} · {job.status().state} · {job.id}")


def interval_caption(table: dict[str, Any]) -> str:
    """Which interval the table shows, in words."""
    if table["interval"] == ONE_SEED:
        return "One seed: the table shows no interval (two or more seeds give a 95% t-interval)."
    return (f"Mean over seeds and a {INTERVAL_METHOD}: how much the result moves with the training seed "
            "(and, for the random metric, the subset drawn); it does not cover the eval set's own sampling noise.")


DASH = "—"  # a value that does not exist (the baseline's interval, one seed's), not a zero


def table_frame(table: dict[str, Any], agreement: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per metric, the baseline first: mean, interval, per-seed values, prompts, training pairs,
    and the audit's judge agreement on that metric's subset when an audit is given."""
    subsets = (agreement or {}).get("subsets", {})
    rows = []
    base = table.get("baseline")
    if base:
        rows.append({"metric": BASELINE, "mean": base.get("mean"), "95% interval": DASH, "ci_low": None,
                     "ci_high": None, "per seed": DASH, "n prompts": base.get("n"), "pairs": DASH})
    for row in table["rows"]:
        interval = DASH if row["ci_low"] is None else f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        rows.append({"metric": row["metric"], "mean": row["mean"], "95% interval": interval, "ci_low": row["ci_low"],
                     "ci_high": row["ci_high"],
                     "per seed": " ".join("-" if v is None else f"{v:.3f}" for v in row["values"]),
                     "n prompts": row["n_prompts"], "pairs": DASH if row["pairs"] is None else str(row["pairs"])})
    frame = pd.DataFrame(rows)
    if subsets:
        def agree(metric: str) -> str:
            s = subsets.get(metric) or {}
            if s.get("agreement") is None:
                return ""
            return f"{s['agreement']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}] of {s['decisive']}"

        frame["judge agreement (audit's own subsets)"] = [agree(m) for m in frame["metric"]]
    return frame


def results_figure(table: dict[str, Any]) -> go.Figure:
    """Mean per metric with its 95% interval as error bars, the baseline as a dashed line."""
    rows = [r for r in table["rows"] if r["mean"] is not None]
    names = [r["metric"] for r in rows]
    means = [r["mean"] for r in rows]
    plus = [0.0 if r["ci_high"] is None else r["ci_high"] - r["mean"] for r in rows]
    minus = [0.0 if r["ci_low"] is None else r["mean"] - r["ci_low"] for r in rows]
    fig = go.Figure(go.Scatter(
        x=names, y=means, mode="markers", name="mean over seeds", marker={"size": 12},
        error_y={"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "visible": True},
        customdata=[" ".join("-" if v is None else f"{v:.3f}" for v in r["values"]) for r in rows],
        hovertemplate="%{x}: %{y:.3f}<br>per seed: %{customdata}<extra></extra>",
    ))
    base = (table.get("baseline") or {}).get("mean")
    if base is not None:
        fig.add_hline(y=base, line_dash="dash", annotation_text=f"baseline {base:.3f}", annotation_position="top left")
    fig.update_layout(title=f"{table['evaluator']}: mean and 95% interval per metric", xaxis_title="subset trained on",
                      yaxis_title=table["evaluator"], height=380, margin={"t": 50, "b": 40}, showlegend=False)
    return fig


def table_choices(ws: Workspace, dataset: str) -> dict[str, list[str | None]]:
    """The dataset's score tables a form may name, per kind, after None (the default): a fingerprint is picked
    from these, never typed (it becomes a path under scores/)."""
    from marginlens.core.scoring.score_tables import list_score_tables

    return {kind: [None, *(m["fingerprint"] for m in list_score_tables(ws, dataset, kind))]
            for kind in ("logprob", "reward")}


def table_label(default: str) -> Any:
    """How a table choice shows: None as what the default means."""
    return lambda fp: f"(default: {default})" if fp is None else fp


def path_stat(path: str | None) -> list[Any]:
    """Size and modification time of a file, or of every file in a folder (a model retrained in place)."""
    if not path:
        return []
    target = Path(path).expanduser()
    files = sorted(target.iterdir()) if target.is_dir() else [target] if target.is_file() else []
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]


def plan_inputs(ws: Workspace, dataset: str, form: dict[str, Any]) -> str:
    """What the spec and plan of `form` read besides the form: the dataset's import, its score tables (and
    how many rows each holds), the eval set file, the starting model's folder and how many jobs have finished
    (the estimate's rates)."""
    from marginlens.core.scoring.score_tables import list_score_tables

    tables = [(m["fingerprint"], m.get("rows"), m.get("created")) for m in list_score_tables(ws, dataset)]
    return json.dumps({"dataset": ws.dataset_manifest(dataset).get("fingerprint"), "tables": tables,
                       "eval_set": path_stat(form.get("eval_set")), "policy": path_stat(form.get("policy")),
                       "verifiers": os.environ.get("MARGINLENS_VERIFIER_MODULES"),
                       "rates": finished_jobs(ws)}, default=str)


@st.cache_data(max_entries=16, show_spinner=False)
def cached_plan(root: str, dataset: str, form_json: str, inputs: str) -> tuple[dict[str, Any], list[str], Any]:
    """build_spec and plan_experiment of the form (a JSON of build_spec's keyword arguments): the spec's
    params, the plan's lines and its time estimate (a dict, kept beside the job it starts). `inputs`
    (plan_inputs) is only the cache key. Errors are not cached."""
    from marginlens.core.experiments.experiment_plan import plan_experiment
    from marginlens.core.experiments.experiment_spec import build_spec

    ws = Workspace(root)
    spec = build_spec(ws, dataset, **json.loads(form_json))
    plan = plan_experiment(ws, spec)
    return spec.to_params(), plan.lines(), plan.estimate.to_dict() if plan.estimate else None


def audit_stamp(ws: Workspace, dataset: str) -> tuple[tuple[str, str], ...]:
    from marginlens.core.audit.audit_job import list_audits

    return tuple((job.id, str(job.status().state)) for job in list_audits(ws, dataset))


@st.cache_data(max_entries=16, show_spinner=False)
def cached_agreement(root: str, dataset: str, stamp: tuple[tuple[str, str], ...]) -> dict[str, Any] | None:
    """audit_agreement, read again only when an audit of the dataset appears or changes state (`stamp`)."""
    from marginlens.core.experiments.experiment_results import audit_agreement

    return audit_agreement(Workspace(root), dataset)


def agreement_caption(agreement: dict[str, Any]) -> str:
    return (f"Judge agreement: the audit {agreement['audit_job']} ({agreement['judge_model']}), share of decisive "
            f"pairs where the judge prefers the chosen answer, Wilson 95% interval; {AUDIT_SUBSETS}.")
