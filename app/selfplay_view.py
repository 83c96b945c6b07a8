"""The Self-play page's logic, without widgets: the form's spec and plan (cached across script reruns, keyed
on what they read), how a run is labelled, the results table per iteration and metric as a frame, and the
chart of the mean (with its 95% interval) against the iteration, iteration 0 being the starting model.
The timeline of a run's rounds and the lineage of its rewrites are in app.selfplay_timeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from marginlens.app import llm_endpoints
from marginlens.app.access import EndpointChoice
from marginlens.app.experiments_view import path_stat
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_results import INTERVAL_METHOD, ONE_SEED
from marginlens.core.jobs import Job
from marginlens.core.run_estimate import finished_jobs
from marginlens.core.selfplay.selfplay_spec import SelfPlaySpec
from marginlens.core.workspace import Workspace

STARTING = "starting model"
DASH = "—"  # a value that does not exist (the starting model's interval, one seed's), not a zero
METRICS_CAPTION = ("map: M_AP = z(m_ex) - w·z(|m_im|), the alignment potential; explicit: eva's own rule, the "
                   "reward gap m_ex between the best and the worst answer.")


PROFILE_LABELS = {"reference": "reference: the authors' scripts", "marginlens": "marginlens: this library's rules"}
PROFILE_HELP = ("reference: the authors' evol_select scripts (a system prompt for non-Gemma models, best = last "
                "highest reward and worst = first lowest with ties kept at margin 0, a prompt with an empty answer "
                "dropped, at most 10,000 rewrite pairs per round, no length filter unless asked, 4096 new tokens on "
                "a GPU and 128 on CPU). marginlens: pairs need two different rewards and texts, every pair is "
                "trained on, rewrites within 5x their parent's length, 128 new tokens. docs/SELFPLAY.md compares "
                "them line by line.")


def profile_placeholders(profile: str, device: str, filter_prompt: bool) -> tuple[str, str, str]:
    """What the empty answer-token, rewrite-token and length-ratio inputs stand for under `profile` on `device`
    ("auto" resolved here as the spec resolves it), short enough to fit the inputs."""
    from marginlens.core.scoring.models import resolve_device
    from marginlens.core.selfplay.evolve_job import EvolveParams
    from marginlens.core.selfplay.profiles import reference_settings
    from marginlens.core.selfplay.rollout_job import SAMPLING

    if profile != "reference":
        ours = EvolveParams()
        return f"{SAMPLING.max_new_tokens} (profile)", f"{ours.max_new_tokens} (profile)", f"{ours.max_ratio:g} (profile)"
    sampling, evolve, _ = reference_settings("", "", resolve_device(device), filter_prompt, None)
    ratio = evolve["max_ratio"]
    return (f"{sampling['max_new_tokens']} (profile)", f"{evolve['max_new_tokens']} (profile)",
            "off (profile)" if ratio is None else f"{ratio:g} (profile)")


def strategies_markdown(names: list[str]) -> str:
    """Each picked strategy with its whole description, one line each: the chips above hold names only."""
    from marginlens.core.selfplay.strategies import STRATEGIES

    return "\n".join(f"- **{n}**: {STRATEGIES[n].description}" for n in names if n in STRATEGIES)


def check_form(form: dict[str, Any]) -> None:
    """What the page refuses before building anything, in the page's words (build_selfplay_spec says the rest)."""
    if not str(form.get("annotate") or "").strip():
        raise MarginLensError("name an annotator: how each sampled answer is scored (e.g. verifier:self-consistency, "
                              "reward:MODEL or rating:MODEL)")
    if not str(form.get("eval") or "").strip():
        raise MarginLensError("name an evaluator: how each trained model is scored on the eval set (e.g. "
                              "verifier:answer-match)")
    if not form.get("metrics"):
        raise MarginLensError("pick at least one metric")
    if not form.get("strategies"):
        raise MarginLensError("pick at least one rewrite strategy")


def plan_inputs(ws: Workspace, dataset: str, form: dict[str, Any]) -> str:
    """What the spec and plan read besides the form: the dataset's import, the eval set file, the starting
    model's folder and the verifier plug-ins. Only a cache key."""
    import os

    from marginlens.core.experiments.verifiers import PLUGINS_ENV

    return json.dumps({"dataset": ws.dataset_manifest(dataset).get("fingerprint"),
                       "eval_set": path_stat(form.get("eval_set")), "policy": path_stat(form.get("policy")),
                       "verifiers": os.environ.get(PLUGINS_ENV), "rates": finished_jobs(ws)}, default=str)


@st.cache_data(max_entries=16, show_spinner=False)
def cached_plan(root: str, dataset: str, form_json: str, inputs: str) -> tuple[dict[str, Any], list[str], Any]:
    """build_selfplay_spec and plan_selfplay of the form (a JSON of build_selfplay_spec's keyword arguments):
    the spec's params, the plan's lines and its time estimate (a dict, kept beside the job it starts). `inputs`
    (plan_inputs) is only the cache key; errors are not cached."""
    from marginlens.core.selfplay.selfplay_spec import build_selfplay_spec, plan_selfplay

    ws = Workspace(root)
    spec = build_selfplay_spec(ws, dataset, **json.loads(form_json))
    plan = plan_selfplay(ws, spec)
    return spec.to_params(), plan.lines(), plan.estimate.to_dict() if plan.estimate else None


# The variables the workers of each part read their key from (the spec's api_key_env): set by the page, one per
# part, so that each key reaches only the worker asking its own endpoint.
KEY_VARIABLES = {"annotator": "MARGINLENS_ANNOTATOR_KEY", "evaluator": "MARGINLENS_EVALUATOR_KEY",
                 "evolver": "MARGINLENS_EVOLVER_KEY"}


def llm_parts(spec: SelfPlaySpec) -> list[tuple[str, str, str | None, str]]:
    """(what, model, base URL, the environment variable of its key) for each part of the run that asks an LLM."""
    from marginlens.core.chat_client import KEY_ENV

    parts = [(what, e.target, e.base_url, e.api_key_env or KEY_ENV)
             for what, e in (("annotator", spec.annotator), ("evaluator", spec.evaluator)) if e.asks_llm]
    if spec.evolver.get("kind") == "openai":
        parts.append(("evolver", spec.evolver["model"], spec.evolver.get("base_url"),
                      spec.evolver.get("api_key_env") or KEY_ENV))
    return parts


def is_openai(evolver: str | None) -> bool:
    """Whether the evolver text names an OpenAI-compatible endpoint (its endpoint picker and call cap apply)."""
    return (evolver or "").strip().lower().startswith("openai:")


def evolver_text(evolver: str, workspace_root: Path) -> str:
    """A local evolver's model confined like any model (access.model_spec); an openai one as typed."""
    from marginlens.app.access import model_spec

    kind, sep, model = evolver.strip().partition(":")
    if sep and kind.strip().lower() == "local" and model.strip():
        return f"local:{model_spec(model, workspace_root, 'evolver model')}"
    return evolver.strip()


def _choice(what: str, url: str | None, picked: dict[str, EndpointChoice | None]) -> EndpointChoice:
    own = picked.get(what)
    others = [c for w, c in picked.items() if w != what and c is not None]
    return llm_endpoints.for_url(url, ([own] if own is not None else []) + others)


def worker_env(spec: SelfPlaySpec, picked: dict[str, EndpointChoice | None]) -> dict[str, str]:
    """The workers' extra environment: under each LLM part's variable, the key for that part's own URL (the one
    picked for the part, else for that URL, else a configured endpoint's there), "" for none; OPENAI_API_KEY
    set too (to "" when no part reads it), so no child worker inherits one."""
    from marginlens.core.chat_client import KEY_ENV

    env: dict[str, str] = {KEY_ENV: ""}
    for what, _, url, variable in llm_parts(spec):
        env.update(llm_endpoints.key_env(_choice(what, url, picked), variable))
    return env


def check_endpoints(spec: SelfPlaySpec, picked: dict[str, EndpointChoice | None]) -> None:
    """Every LLM endpoint the run asks must answer now, each with its own key (not this process's)."""
    for what, model, url, _ in llm_parts(spec):
        try:
            llm_endpoints.check(model, _choice(what, url, picked))
        except MarginLensError as exc:
            raise MarginLensError(f"the {what}'s endpoint: {exc}") from None


def job_label(job: Job) -> str:
    try:
        spec = SelfPlaySpec.from_params(job.spec["params"])
    except (KeyError, TypeError):  # a folder without a readable spec: still listed, by its id
        return f"? · {job.id}"
    return (f"{spec.dataset}: {', '.join(spec.metrics)} x {len(spec.seeds)} seeds, {spec.iterations} iterations, "
            f"{spec.evaluator.label} · {job.status().state} · {job.id}")


def interval_caption(table: dict[str, Any]) -> str:
    if table.get("interval") == ONE_SEED or len(table.get("seeds") or []) < 2:
        return "One seed: no interval (two or more seeds give a 95% t-interval)."
    return (f"Mean over seeds and a {INTERVAL_METHOD}: how much the result moves with the seed; it does not cover "
            "the eval set's own sampling noise. A chain that stopped early counts only up to its last iteration.")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table_frame(table: dict[str, Any]) -> pd.DataFrame:
    """One row per iteration and metric, iteration 0 (the starting model) first: mean, 95% interval,
    per-seed values, seeds that got there, eval prompts, each seed's training pairs."""
    rows = []
    base = table.get("baseline")
    if base:
        rows.append({"iteration": 0, "metric": STARTING, "mean": base.get("mean"), "95% interval": DASH,
                     "per seed": DASH, "seeds": DASH, "n prompts": base.get("n"), "training pairs": DASH})
    n_seeds = len(table.get("seeds") or [])
    for it in table.get("iterations", []):
        for row in it["rows"]:
            interval = DASH if row.get("ci_low") is None else f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
            rows.append({"iteration": it["iteration"], "metric": row["metric"], "mean": row.get("mean"),
                         "95% interval": interval, "per seed": " ".join(_fmt(v) for v in row.get("values", [])),
                         "seeds": f"{row.get('n_seeds', 0)} of {n_seeds}", "n prompts": row.get("n_prompts"),
                         "training pairs": " ".join(DASH if p is None else str(p) for p in row.get("pairs") or [])
                         or DASH})
    return pd.DataFrame(rows, columns=["iteration", "metric", "mean", "95% interval", "per seed", "seeds",
                                       "n prompts", "training pairs"])


def results_figure(table: dict[str, Any]) -> go.Figure:
    """Per metric, the mean over seeds against the iteration with its 95% interval as a band; every line starts
    at the starting model's value (iteration 0)."""
    fig = go.Figure()
    base = (table.get("baseline") or {}).get("mean")
    for metric in table.get("metrics", []):
        xs, means, lows, highs = [], [], [], []
        if base is not None:
            xs, means, lows, highs = [0], [base], [base], [base]
        for it in table.get("iterations", []):
            row = next((r for r in it["rows"] if r["metric"] == metric), None)
            if row is None or row.get("mean") is None:
                continue
            xs.append(it["iteration"])
            means.append(row["mean"])
            lows.append(row["mean"] if row.get("ci_low") is None else row["ci_low"])
            highs.append(row["mean"] if row.get("ci_high") is None else row["ci_high"])
        if not xs:
            continue
        line = go.Scatter(x=xs, y=means, mode="lines+markers", name=metric, legendgroup=metric,
                          hovertemplate=f"{metric}, iteration %{{x}}: %{{y:.3f}}<extra></extra>")
        fig.add_trace(line)
        if any(lo != hi for lo, hi in zip(lows, highs, strict=True)):
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=highs + lows[::-1], fill="toself", opacity=0.2,
                                     line={"width": 0}, name=f"{metric} 95% interval", legendgroup=metric,
                                     hoverinfo="skip", showlegend=False))
    fig.update_layout(title=f"{table.get('evaluator', '')}: mean over seeds per iteration (0 = starting model)",
                      xaxis_title="iteration", yaxis_title=table.get("evaluator", ""), height=380,
                      margin={"t": 50, "b": 40}, xaxis={"dtick": 1})
    return fig
