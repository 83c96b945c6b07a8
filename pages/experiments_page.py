"""Experiments: does selecting by a metric help? Train on each metric's subset, evaluate held out; and the
Theory tab (Theorem 3.1 as a simulation)."""

from __future__ import annotations

import json

import streamlit as st
from marginlens.app import access, llm_endpoints, widgets
from marginlens.app import experiments_view as ev
from marginlens.app.access import EndpointChoice
from marginlens.app.job_panel import job_panel
from marginlens.app.state import current_dataset, workspace
from marginlens.app.theory_view import render_theory
from marginlens.app.training_view import dashboard_overrides
from marginlens.core import jobs
from marginlens.core.chat_client import KEY_ENV
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_job import (
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
from marginlens.core.run_estimate import estimate_vs_actual, record_estimate
from marginlens.core.scoring.models import DEFAULT_POLICY
from marginlens.core.selection.margins import DEFAULT_BETA
from marginlens.core.selection.metrics import DEFAULT_PARAMS, metric_names
from marginlens.core.training.presets import METHODS

JOB_KEY = "experiments_job"  # the experiment the page shows; kept across pages
# Shown in the empty box: worded as an example, so it never reads as a value in force.
ENDPOINT_KEY = "_exp_endpoint"  # the evaluator endpoint picker's widgets (access.endpoint_picker)

ws = workspace()
st.title("Experiments")
# Only the open tab runs: the Theory tab's simulation and its scipy import took most of the page's first load.
lab, theory = st.tabs(["Lab", "Theory"], key="_exp_tab", on_change="rerun")

if theory.open:
    with theory:
        render_theory()


def _default_eval() -> str:
    names = verifier_names()
    return "verifier:answer-match" if "answer-match" in names else (f"verifier:{names[0]}" if names else "")


def _form() -> EndpointChoice | None:
    """The new-experiment form; the evaluator endpoint picked in it (for a Resume below), if any."""
    names = ws.dataset_names()
    if not names:
        st.info("No dataset yet: import one on the Data page (or run `marginlens app --demo`).")
        return None
    if not access.operator_only("running an experiment"):
        return None
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
             "options after commas: max_new_tokens=N, max_calls=N. A rating's or judge's endpoint is picked below.")
    eval_set = c3.text_input(
        "Eval set (JSONL file on the server; empty: held out from the dataset)", key="_exp_eval_set",
        help=f"empty: a seeded {HELDOUT_SHARE:.0%} of the dataset's prompts (at most {HELDOUT_CAP}) is held out "
             "and none of its pairs is trained on; a file must lie under a data root of this dashboard")
    endpoint = None
    if llm_endpoints.asks_llm(evaluator):
        endpoint = access.endpoint_picker("Evaluator endpoint", ENDPOINT_KEY)
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
        tables = ev.table_choices(ws, dataset)
        policy_fp = c1.selectbox("Policy table", tables["logprob"], format_func=ev.table_label(
            "the newest scored with the starting model"), key="_exp_policy_fp")
        reward_fp = c2.selectbox("Reward table", tables["reward"], format_func=ev.table_label(
            "the dataset's scores, else the newest"), key="_exp_reward_fp")
        reference_fp = c3.selectbox("Reference table (the DPO form; dpo_gap needs it)", tables["logprob"],
                                    format_func=ev.table_label("none"), key="_exp_reference_fp")
    settings = st.text_area("Training settings, the same for every run (one key=value per line; empty: the "
                            "preset's)", key="_exp_settings", value="", placeholder=ev.SETTINGS_PLACEHOLDER,
                            help="e.g. max_steps=20 or learning_rate=1e-5, one per line; only what is typed here "
                                 "is applied, and the plan below lists what each run gets")
    try:
        text = llm_endpoints.evaluator_text(evaluator, ws.root, "Evaluator")
        if endpoint is not None:
            text = llm_endpoints.with_endpoint(text, endpoint, "Evaluator endpoint")
        form = {"metrics": list(metrics), "ratio": float(ratio), "method": method, "seeds": int(seeds), "eval": text,
                "eval_set": str(access.server_path(eval_set, "Eval set")) if eval_set.strip() else None,
                "policy": access.model_spec(policy, ws.root, "starting model") if policy.strip() else None,
                "device": None if device == "auto" else device, "weight": float(weight), "signed": bool(signed),
                "threshold": float(threshold), "beta": float(beta), "policy_fp": policy_fp, "reward_fp": reward_fp,
                "reference_fp": reference_fp}
        form["overrides"] = dashboard_overrides(ev.overrides_from_text(settings), access.server_path)
        params, lines, estimate = ev.cached_plan(str(ws.root), dataset, json.dumps(form, sort_keys=True),
                                                 ev.plan_inputs(ws, dataset, form))
    except MarginLensError as exc:
        widgets.show_error(exc)
        return endpoint
    spec = ExperimentSpec.from_params(params)
    with st.container(border=True):
        st.markdown("**What it will take**")
        st.markdown("\n".join(f"- {widgets.md_escape(line)}" for line in lines))
    if st.button("Start", type="primary", key="_exp_start"):
        try:
            job = _submit(spec, endpoint)
        except MarginLensError as exc:
            widgets.show_error(exc)
            return endpoint
        record_estimate(job.dir, estimate)
        st.session_state[JOB_KEY] = st.session_state["_exp_run"] = job.id
        st.success(f"Experiment job {job.id} is {job.status().state}.")
    return endpoint


def _env(spec: ExperimentSpec, endpoint: EndpointChoice | None) -> dict[str, str]:
    """The evaluator's key for the worker, under the variable it reads (a spec the CLI made may name its own:
    it is overwritten too, never inherited): the key picked for the evaluator's own URL (or the configured
    endpoint's there), "" for none; nothing for an evaluator that asks no LLM."""
    if not spec.evaluator.asks_llm:
        return {}
    picked = [endpoint] if endpoint is not None else []
    choice = llm_endpoints.for_url(spec.evaluator.base_url, picked)
    return llm_endpoints.key_env(choice, spec.evaluator.api_key_env or KEY_ENV)


def _results(endpoint: EndpointChoice | None) -> None:
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
    job_panel(job, title="experiment", on_resume=lambda: _submit(spec, endpoint),
              cancel_help="cancels the running training or evaluation too (a training run saves a checkpoint); "
                          "Resume continues where it stopped")
    state = experiment_state(job)
    if state.get("cells"):
        steps = {}
        for cell in state["cells"].values():
            steps[cell.get("step", "waiting")] = steps.get(cell.get("step", "waiting"), 0) + 1
        st.caption(f"{state.get('eval_prompts', '?')} eval prompts, {state.get('excluded_pairs', 0)} pairs kept out "
                   "of training; cells: " + ", ".join(f"{n} {step}" for step, n in steps.items()))
    for line in estimate_vs_actual(job.dir):
        st.caption(widgets.md_escape(f"Estimate vs actual · {line}"))
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


def _submit(spec: ExperimentSpec, endpoint: EndpointChoice | None) -> jobs.Job:
    """Start, join or resume the experiment: its LLM evaluator is asked first, with the key for its own URL."""
    if spec.evaluator.asks_llm:
        llm_endpoints.check(spec.evaluator.target, llm_endpoints.for_url(spec.evaluator.base_url,
                                                                         [endpoint] if endpoint else []))
    return submit_experiment(ws, spec, env=_env(spec, endpoint), check=False)


with lab:
    st.subheader("New experiment")
    st.caption("For each metric and seed: select the metric's top pairs, train with one identical configuration, "
               "evaluate the trained model on held-out prompts; the starting model is evaluated once as the baseline.")
    _results(_form())
