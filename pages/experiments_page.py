"""Experiments: does selecting by a metric help? Train on each metric's subset, evaluate held out; and the
Theory tab (Theorem 3.1 as a simulation)."""

from __future__ import annotations

import json

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
from marginlens.core.experiments.experiment_spec import (
    DEFAULT_METRICS,
    DEFAULT_RATIO,
    DEFAULT_SEEDS,
    HELDOUT_CAP,
    HELDOUT_SHARE,
    ExperimentSpec,
)
from marginlens.core.experiments.verifiers import verifier_names
from marginlens.core.scoring.models import DEFAULT_POLICY
from marginlens.core.selection.margins import DEFAULT_BETA
from marginlens.core.selection.metrics import DEFAULT_PARAMS, metric_names
from marginlens.core.training.presets import METHODS

JOB_KEY = "experiments_job"  # the experiment the page shows; kept across pages
API_KEY = "_exp_api_key"

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
    with st.expander("Selection parameters and score tables"):
        c1, c2, c3, c4 = st.columns(4)
        weight = c1.number_input("Weight w (M_AP)", value=float(DEFAULT_PARAMS.weight), key="_exp_weight")
        threshold = c2.number_input("Threshold tau", value=float(DEFAULT_PARAMS.threshold), key="_exp_threshold",
                                    help="the threshold rule keeps pairs with m_ex >= tau")
        beta = c3.number_input("Beta (DPO form)", value=float(DEFAULT_BETA), min_value=1e-6, format="%.4f",
                               key="_exp_beta")
        signed = c4.checkbox("Signed m_im", value=bool(DEFAULT_PARAMS.signed), key="_exp_signed")
        c1, c2, c3 = st.columns(3)
        policy_fp = c1.text_input("Policy table (empty: the newest scored with the starting model)", key="_exp_policy_fp")
        reward_fp = c2.text_input("Reward table (empty: the dataset's scores, else the newest)", key="_exp_reward_fp")
        reference_fp = c3.text_input("Reference table (the DPO form; dpo_gap needs it)", key="_exp_reference_fp")
    settings = st.text_area("Training settings, the same for every run (one key=value per line; preset defaults "
                            "otherwise)", key="_exp_settings", placeholder="max_steps=20\nlearning_rate=1e-5")
    form = {"metrics": list(metrics), "ratio": float(ratio), "method": method, "seeds": int(seeds), "eval": evaluator,
            "eval_set": eval_set.strip() or None, "policy": policy.strip() or None,
            "device": None if device == "auto" else device, "weight": float(weight), "signed": bool(signed),
            "threshold": float(threshold), "beta": float(beta), "policy_fp": policy_fp.strip() or None,
            "reward_fp": reward_fp.strip() or None, "reference_fp": reference_fp.strip() or None}
    try:
        form["overrides"] = ev.overrides_from_text(settings)
        params, lines = ev.cached_plan(str(ws.root), dataset, json.dumps(form, sort_keys=True),
                                       ev.plan_inputs(ws, dataset, form))
    except MarginLensError as exc:
        widgets.show_error(exc)
        return
    spec = ExperimentSpec.from_params(params)
    with st.container(border=True):
        st.markdown("**What it will take**")
        st.markdown("\n".join(f"- {widgets.md_escape(line)}" for line in lines))
    if spec.evaluator.asks_llm:
        st.text_input("API key (kept in the worker's environment only, never written)", type="password", key=API_KEY)
    if st.button("Start", type="primary", key="_exp_start"):
        env = _env(spec)
        if spec.evaluator.asks_llm and not env:
            from marginlens.core.chat_client import KEY_ENV

            st.error(f"{spec.evaluator.label} asks an LLM: type its API key above (or set "
                     f"${spec.evaluator.api_key_env or KEY_ENV} before starting the dashboard)")
            return
        job = submit_experiment(ws, spec, env=env)
        st.session_state[JOB_KEY] = st.session_state["_exp_run"] = job.id
        st.success(f"Experiment job {job.id} is {job.status().state}.")


def _env(spec: ExperimentSpec) -> dict[str, str]:
    """The evaluator's key for the worker: the one typed on this page, else the environment's."""
    env = child_env(spec)
    typed = st.session_state.get(API_KEY)
    if typed and spec.evaluator.asks_llm:
        from marginlens.core.chat_client import KEY_ENV

        env[spec.evaluator.api_key_env or KEY_ENV] = typed
    return env


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
    spec = ExperimentSpec.from_params(job.spec["params"])
    job_panel(job, title="experiment", on_resume=lambda: submit_experiment(ws, spec, env=_env(spec)),
              cancel_help="cancels the running training or evaluation too (a training run saves a checkpoint); "
                          "Resume continues where it stopped")
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
    agreement = ev.cached_agreement(str(ws.root), spec.dataset, ev.audit_stamp(ws, spec.dataset))
    frame = ev.table_frame(table, agreement)
    st.dataframe(frame.drop(columns=["ci_low", "ci_high"]), hide_index=True,
                 column_config={"mean": st.column_config.NumberColumn(format="%.3f")})
    st.caption(ev.interval_caption(table))
    if agreement:
        st.caption(ev.agreement_caption(agreement))
    st.plotly_chart(ev.results_figure(table), key="_exp_chart", config={"displaylogo": False})


with lab:
    st.subheader("New experiment")
    st.caption("For each metric and seed: select the metric's top pairs, train with one identical configuration, "
               "evaluate the trained model on held-out prompts; the starting model is evaluated once as the baseline.")
    _form()
    _results()
