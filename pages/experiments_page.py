"""Experiments: does selecting by a metric help? Train on each metric's subset, evaluate held out; and the
Theory tab (Theorem 3.1 as a simulation)."""

from __future__ import annotations

import streamlit as st
from marginlens.app import experiments_view as ev
from marginlens.app import widgets
from marginlens.app.job_panel import job_panel
from marginlens.app.state import current_dataset, workspace
from marginlens.app.theory_view import render_theory
from marginlens.core import jobs
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_job import (
    child_env,
    experiment_state,
    experiment_table,
    submit_experiment,
)
from marginlens.core.experiments.experiment_plan import plan_experiment
from marginlens.core.experiments.experiment_results import audit_agreement
from marginlens.core.experiments.experiment_spec import (
    DEFAULT_METRICS,
    DEFAULT_RATIO,
    DEFAULT_SEEDS,
    HELDOUT_CAP,
    HELDOUT_SHARE,
    build_spec,
)
from marginlens.core.experiments.verifiers import verifier_names
from marginlens.core.scoring.models import DEFAULT_POLICY
from marginlens.core.selection.metrics import metric_names
from marginlens.core.training.presets import METHODS

JOB_KEY = "experiments_job"  # the experiment the page shows; kept across pages

ws = workspace()
st.title("Experiments")
lab, theory = st.tabs(["Lab", "Theory"])

with theory:
    render_theory()


def _default_eval() -> str:
    names = verifier_names()
    return "verifier:answer-match" if "answer-match" in names else (f"verifier:{names[0]}" if names else "")


def _form() -> None:
    names = ws.dataset_names()
    if not names:
        st.info("No dataset yet: import one on the Data page (or run `marginlens app --demo`).")
        return
    current = current_dataset(names)
    c1, c2, c3, c4 = st.columns([2, 3, 1, 1])
    dataset = c1.selectbox("Dataset", names, index=names.index(current), key="_exp_dataset")
    metrics = c2.multiselect("Metrics", metric_names(), default=[m for m in DEFAULT_METRICS if m in metric_names()],
                             key="_exp_metrics", help="one subset per metric, its top `ratio` of the candidates")
    ratio = c3.number_input("Ratio", 0.01, 1.0, DEFAULT_RATIO, 0.05, key="_exp_ratio")
    seeds = c4.number_input("Seeds", 1, 20, DEFAULT_SEEDS, key="_exp_seeds",
                            help="runs per metric; the seed sets the trainer's seed and the random metric's draw")
    c1, c2, c3 = st.columns([1, 3, 3])
    method = c1.radio("Method", METHODS, index=METHODS.index("simpo"), format_func=str.upper, key="_exp_method")
    evaluator = c2.text_input(
        "Evaluator", value=_default_eval(), key="_exp_eval",
        help="verifier:NAME (checkable answers; built in: " + (", ".join(verifier_names()) or "none") + "), "
             "reward:MODEL, rating:MODEL or judge:MODEL (win rate against the starting model, both orders); "
             "options after commas: base_url=URL, max_new_tokens=N, api_key_env=NAME")
    eval_set = c3.text_input(
        "Eval set (JSONL file; empty: held out from the dataset)", key="_exp_eval_set",
        help=f"empty: a seeded {HELDOUT_SHARE:.0%} of the dataset's prompts (at most {HELDOUT_CAP}) is held out "
             "and none of its pairs is trained on")
    c1, c2 = st.columns([3, 1])
    policy = c1.text_input("Starting model (Hub id or folder)", value=DEFAULT_POLICY, key="_exp_policy")
    device = c2.selectbox("Device", ("auto", "cpu", "cuda"), key="_exp_device")
    settings = st.text_area("Training settings, the same for every run (one key=value per line; preset defaults "
                            "otherwise)", key="_exp_settings", placeholder="max_steps=20\nlearning_rate=1e-5")
    try:
        spec = build_spec(ws, dataset, metrics=metrics, ratio=float(ratio), method=method, seeds=int(seeds),
                          eval=evaluator, eval_set=eval_set.strip() or None, policy=policy.strip() or None,
                          overrides=ev.overrides_from_text(settings), device=None if device == "auto" else device)
        plan = plan_experiment(ws, spec)
    except MarginLensError as exc:
        widgets.show_error(exc)
        return
    with st.container(border=True):
        st.markdown("**What it will take**")
        st.markdown("\n".join(f"- {widgets.md_escape(line)}" for line in plan.lines()))
    key = None
    if spec.evaluator.asks_llm:
        key = st.text_input("API key (kept in the worker's environment only, never written)", type="password",
                            key="_exp_api_key")
    if st.button("Start", type="primary", key="_exp_start"):
        env = child_env(spec)
        if key:
            from marginlens.core.chat_client import KEY_ENV

            env[spec.evaluator.api_key_env or KEY_ENV] = key
        job = submit_experiment(ws, spec, env=env)
        st.session_state[JOB_KEY] = st.session_state["_exp_run"] = job.id
        st.success(f"Experiment job {job.id} is {job.status().state}.")


def _results() -> None:
    st.subheader("Experiments run")
    runs = {j.id: j for j in jobs.list_jobs(ws, "experiment")}
    if not runs:
        st.caption("No experiment yet.")
        return
    ids = list(runs)
    current = st.session_state.get(JOB_KEY)
    if current in ids and st.session_state.get("_exp_run") not in ids:
        st.session_state["_exp_run"] = current
    job_id = st.selectbox("Experiment", ids, format_func=lambda i: ev.job_label(runs[i]), key="_exp_run")
    st.session_state[JOB_KEY] = job_id
    job = runs[job_id]
    job_panel(job, title="experiment", cancel_help="cancels the running training or evaluation too (a training "
                                                   "run saves a checkpoint); Resume continues where it stopped")
    state = experiment_state(job)
    if state.get("cells"):
        steps = {}
        for cell in state["cells"].values():
            steps[cell.get("step", "waiting")] = steps.get(cell.get("step", "waiting"), 0) + 1
        st.caption(f"{state.get('eval_prompts', '?')} eval prompts, {state.get('excluded_pairs', 0)} pairs kept out "
                   "of training; cells: " + ", ".join(f"{n} {step}" for step, n in steps.items()))
    table = experiment_table(job)
    if not table:
        st.caption("Results appear once the baseline is evaluated.")
        return
    agreement = audit_agreement(ws, job.spec["params"]["dataset"])
    frame = ev.table_frame(table, agreement)
    st.dataframe(frame.drop(columns=["ci_low", "ci_high"]), hide_index=True)
    st.caption(ev.interval_caption(table))
    if agreement:
        st.caption(f"Judge agreement: the audit {agreement['audit_job']} ({agreement['judge_model']}), share of "
                   "decisive pairs where the judge prefers the chosen answer, Wilson 95% interval; on each metric's "
                   "top-k of the whole dataset, as the audit drew it.")
    st.plotly_chart(ev.results_figure(table), key="_exp_chart", config={"displaylogo": False})


with lab:
    st.subheader("New experiment")
    st.caption("For each metric and seed: select the metric's top pairs, train with one identical configuration, "
               "evaluate the trained model on held-out prompts; the starting model is evaluated once as the baseline.")
    _form()
    _results()
