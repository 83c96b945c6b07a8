"""Self-play: a model improves itself on evolving prompts, the prompts to evolve selected by a metric (M_AP
against eva's reward gap). The page plans and submits the run and reads its job folders; nothing runs here."""

from __future__ import annotations

import json

import streamlit as st
from marginlens.app import access, llm_endpoints, widgets
from marginlens.app import selfplay_timeline as tl
from marginlens.app import selfplay_view as sv
from marginlens.app.access import EndpointChoice
from marginlens.app.experiments_view import SETTINGS_PLACEHOLDER, overrides_from_text
from marginlens.app.job_panel import job_panel
from marginlens.app.state import current_dataset, workspace
from marginlens.app.training_view import dashboard_overrides
from marginlens.core import jobs
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_results import cell_key
from marginlens.core.experiments.verifiers import get_verifier, verifier_names
from marginlens.core.job_status import POLL_SECONDS
from marginlens.core.run_estimate import estimate_vs_actual, record_estimate
from marginlens.core.scoring.models import DEFAULT_POLICY
from marginlens.core.selection.metrics import DEFAULT_PARAMS
from marginlens.core.selfplay import selfplay_spec as sps
from marginlens.core.selfplay.profiles import DEFAULT_PROFILE, PROFILES, REFERENCE_TRAIN_SIZE
from marginlens.core.selfplay.rollout_job import SAMPLING
from marginlens.core.selfplay.selfplay_job import selfplay_results, selfplay_state, submit_selfplay
from marginlens.core.selfplay.selfplay_spec import evolve_settings, sampling_settings
from marginlens.core.selfplay.strategies import DEFAULT_STRATEGIES, STRATEGIES
from marginlens.core.training.presets import METHODS

JOB_KEY = "selfplay_job"  # the run the page shows; kept across pages

ws = workspace()
st.title("Self-play")
st.caption("For each metric and seed, each iteration: sample answers from the current model, annotate them and pair "
           "best against worst, select the top prompts by the metric, evolve them into new prompts, train on the "
           "pairs, evaluate the trained model on held-out prompts. The rewrites are the next iteration's prompts.")


def _verifier(preferred: str, names: list[str]) -> str:
    return f"verifier:{preferred}" if preferred in names else (f"verifier:{names[0]}" if names else "")


def _reference_free() -> list[str]:
    """The verifiers that can annotate a rewrite: none of them reads a field a new question lacks (an answer)."""
    return [n for n in verifier_names() if set(get_verifier(n).needs) <= {"samples"}]


def _picker(what: str, text: str, key: str, kinds: tuple[str, ...] = llm_endpoints.LLM_KINDS) -> EndpointChoice | None:
    """The endpoint picker of a part whose text asks an LLM (None for one that asks none)."""
    return access.endpoint_picker(f"{what} endpoint", key) if llm_endpoints.kind_of(text) in kinds else None


def _form() -> dict[str, EndpointChoice | None]:
    """The new-run form; the endpoints picked in it, per part (for a Resume below)."""
    names = ws.dataset_names()
    if not names:
        st.info("No dataset yet: import one on the Data page (or run `marginlens app --demo`); its prompts seed "
                "the run.")
        return {}
    if not access.operator_only("starting a self-play run"):
        return {}
    current = current_dataset(names)
    c1, c2 = st.columns([1, 2])
    dataset = c1.selectbox("Dataset (its prompts seed the run)", names, index=names.index(current), key="_sp_dataset")
    policy = c2.text_input("Starting model (Hub id or folder)", value=DEFAULT_POLICY, key="_sp_policy")
    c1, c2, c3 = st.columns(3)
    free = _reference_free()
    annotate = c1.text_input("Annotator (scores each sampled answer)", value=_verifier("self-consistency", free),
                             key="_sp_annotate",
                             help="verifier:NAME, reference-free (a rewritten prompt has no reference answer; "
                                  "available: " + (", ".join(free) or "none") + "), reward:MODEL or rating:MODEL; "
                                  "a rating's endpoint is picked below")
    evaluator = c2.text_input("Evaluator (scores each trained model)", value=_verifier("answer-match", verifier_names()),
                              key="_sp_eval",
                              help="verifier:NAME, reward:MODEL, rating:MODEL or judge:MODEL (win rate against the "
                                   "starting model); a rating's or judge's endpoint is picked below")
    eval_set = c3.text_input("Eval set (JSONL file on the server; empty: held out from the dataset)",
                             key="_sp_eval_set", help="a file must lie under a data root of this dashboard")
    # a judge compares two models: never an annotator (the spec says so), so no endpoint to pick for one
    picked = {"annotator": _picker("Annotator", annotate, "_sp_annotate_endpoint", ("rating",)),
              "evaluator": _picker("Evaluator", evaluator, "_sp_eval_endpoint")}
    c1, c2 = st.columns([2, 3])
    runnable = sps.selfplay_metrics()
    metrics = c1.multiselect("Metrics", runnable, default=[m for m in sps.DEFAULT_METRICS if m in runnable],
                             key="_sp_metrics", help="one chain per metric and seed; only metrics that read a round's "
                                                     "reward gap m_ex and implicit margin m_im")
    c1.caption(sv.METRICS_CAPTION)
    # chips hold the names only (a description cut off in a chip says nothing); the descriptions are listed below
    strategies = c2.multiselect("Rewrite strategies", list(STRATEGIES), default=list(DEFAULT_STRATEGIES),
                                key="_sp_strategies")
    c2.markdown(sv.strategies_markdown(strategies))
    profile = st.radio("Profile", PROFILES, index=PROFILES.index(DEFAULT_PROFILE), horizontal=True,
                       format_func=sv.PROFILE_LABELS.get, key="_sp_profile", help=sv.PROFILE_HELP)
    c1, c2, c3, c4, c5 = st.columns(5)
    seeds = c1.number_input("Seeds", 1, 20, 1, key="_sp_seeds")
    iterations = c2.number_input("Iterations", 1, 20, sps.DEFAULT_ITERATIONS, key="_sp_iterations")
    ratio = c3.number_input("Ratio", 0.01, 1.0, sps.DEFAULT_RATIO, 0.05, key="_sp_ratio",
                            help="the top int(ratio·N) prompts of each round are evolved")
    n = c4.number_input("Answers per prompt (n)", 2, 64, SAMPLING.n, key="_sp_n")
    max_prompts = c5.number_input("Max seed prompts", 2, 100_000, sps.DEFAULT_MAX_PROMPTS, key="_sp_max_prompts")
    evolver = st.text_input("Evolver (empty: the starting model)", key="_sp_evolver",
                            help="local:MODEL (a folder or hub id) or openai:MODEL (an OpenAI-compatible endpoint, "
                                 "picked below)")
    max_calls = None
    if sv.is_openai(evolver):
        c1, c2 = st.columns([3, 2])
        with c1:
            picked["evolver"] = access.endpoint_picker("Evolver endpoint", "_sp_evolver_endpoint")
        max_calls = c2.number_input("Evolver max calls (empty: no cap)", min_value=1, value=None, step=1,
                                    key="_sp_evolver_max_calls", help="requests one evolve job may make, retries "
                                                                      "counted: the cost cap")
    with st.expander("Sampling, evolution and selection settings"):
        c1, c2, c3, c4 = st.columns(4)
        temperature = c1.number_input("Temperature", 0.0, 5.0, SAMPLING.temperature, 0.05, key="_sp_temperature")
        top_p = c2.number_input("Top p", 0.01, 1.0, SAMPLING.top_p, 0.01, key="_sp_top_p")
        # empty: the profile's value, shown as the placeholder (device and filter as last picked)
        tokens, rewrite_tokens, ratio_hint = sv.profile_placeholders(profile, st.session_state.get("_sp_device", "auto"),
                                                                bool(st.session_state.get("_sp_filter_prompt")))
        max_new = c3.number_input("Max new tokens (answers)", 1, 8192, None, key="_sp_max_new", placeholder=tokens)
        backend = c4.selectbox("Sampling backend", ("auto", "transformers", "vllm"), key="_sp_backend")
        c1, c2, c3, c4, c5 = st.columns(5)
        evolve_new = c1.number_input("Max new tokens (rewrites)", 1, 8192, None, key="_sp_evolve_new",
                                     placeholder=rewrite_tokens)
        max_ratio = c2.number_input("Max length ratio", 1.01, 100.0, None, key="_sp_max_ratio", placeholder=ratio_hint,
                                    help="a rewrite is kept within this factor of its parent's length")
        weight = c3.number_input("Weight w (M_AP)", value=float(DEFAULT_PARAMS.weight), key="_sp_weight")
        signed = c4.checkbox("Signed m_im", value=bool(DEFAULT_PARAMS.signed), key="_sp_signed")
        device = c5.selectbox("Device", ("auto", "cpu", "cuda"), key="_sp_device")
        reference = profile == "reference"
        c1, c2 = st.columns(2)
        filter_prompt = c1.checkbox("Length filter (reference profile: the authors' --filter_prompt)", False,
                                    key="_sp_filter_prompt", disabled=not reference,
                                    help="keep rewrites within 5x their parent's length; the marginlens profile "
                                         "always filters")
        train_size = c2.number_input("Train size (reference profile: rewrite pairs per round, at most)", 1,
                                     10_000_000, None, key="_sp_train_size", disabled=not reference,
                                     placeholder=f"{REFERENCE_TRAIN_SIZE:,}, a random draw")
        filter_prompt, train_size = (filter_prompt, train_size) if reference else (False, None)
    c1, c2, c3 = st.columns([1, 2, 4])
    method = c1.radio("Method", METHODS, index=METHODS.index("simpo"), format_func=str.upper, key="_sp_method")
    preset = c2.text_input("Preset (empty: the method's)", key="_sp_preset")
    settings = c3.text_area("Training settings, the same for every run (one key=value per line)", key="_sp_settings",
                            placeholder=SETTINGS_PLACEHOLDER)
    try:
        form = {"annotate": annotate.strip(), "eval": evaluator.strip(), "policy": policy.strip() or None,
                "evolver": evolver.strip() or None, "evolver_url": None, "evolver_key_env": None,
                "evolver_max_calls": None if max_calls is None else int(max_calls),
                "iterations": int(iterations), "metrics": list(metrics), "seeds": int(seeds), "ratio": float(ratio),
                "weight": float(weight), "signed": bool(signed), "strategies": list(strategies),
                "max_prompts": int(max_prompts), "sampling": sampling_settings(n, temperature, top_p, max_new),
                "evolve": evolve_settings(evolve_new, max_ratio), "backend": backend,
                "eval_set": eval_set.strip() or None, "method": method, "preset": preset.strip() or None,
                "device": None if device == "auto" else device, "profile": profile,
                "filter_prompt": filter_prompt, "train_size": train_size}
        sv.check_form(form)
        _confine(form, picked)
        form["overrides"] = dashboard_overrides(overrides_from_text(settings), access.server_path)
        params, lines, estimate = sv.cached_plan(str(ws.root), dataset, json.dumps(form, sort_keys=True),
                                                 sv.plan_inputs(ws, dataset, form))
    except MarginLensError as exc:
        widgets.show_error(exc)
        return picked
    spec = sps.SelfPlaySpec.from_params(params)
    with st.container(border=True):
        st.markdown("**What it will take**")
        st.markdown("\n".join(f"- {widgets.md_escape(line)}" for line in lines))
    if st.button("Start", type="primary", key="_sp_start"):
        try:
            job = _submit(spec, picked)
        except MarginLensError as exc:  # an endpoint that does not answer, a dataset re-imported meanwhile
            widgets.show_error(exc)
            return picked
        record_estimate(job.dir, estimate)
        st.session_state[JOB_KEY] = st.session_state["_sp_run"] = job.id
        st.success(f"Self-play job {job.id} is {job.status().state}.")
    return picked


def _confine(form: dict, picked: dict[str, EndpointChoice | None]) -> None:
    """The form's paths, models and endpoints as the dashboard allows them (access): texts naming an endpoint or
    a key variable refused, the picked endpoints' URLs and the page's key variables put in instead."""
    for field, what in (("annotate", "annotator"), ("eval", "evaluator")):
        text = llm_endpoints.evaluator_text(form[field], ws.root, what.capitalize())
        if picked[what] is not None:
            text = llm_endpoints.with_endpoint(text, picked[what], f"{what.capitalize()} endpoint",
                                               sv.KEY_VARIABLES[what])
        form[field] = text
    if form["policy"]:
        form["policy"] = access.model_spec(form["policy"], ws.root, "starting model")
    if form["evolver"]:
        form["evolver"] = sv.evolver_text(form["evolver"], ws.root)
    if picked.get("evolver") is not None:
        form["evolver_url"] = llm_endpoints.chosen_url(picked["evolver"], "Evolver endpoint")
        form["evolver_key_env"] = sv.KEY_VARIABLES["evolver"]
    if form["eval_set"]:
        form["eval_set"] = str(access.server_path(form["eval_set"], "Eval set"))


def _submit(spec: sps.SelfPlaySpec, picked: dict[str, EndpointChoice | None]) -> jobs.Job:
    """Start, join or resume the run: each LLM endpoint is asked first, with the key for its own URL."""
    sv.check_endpoints(spec, picked)
    return submit_selfplay(ws, spec, env=sv.worker_env(spec, picked), check=False)


def _timeline(job: jobs.Job, order: list[str], live: bool) -> None:
    @st.fragment(run_every=POLL_SECONDS if live else None)
    def draw() -> None:
        access.restore_actor()  # a fragment rerun runs without main.py's sign_in
        state = selfplay_state(job)
        if state.get("message"):
            st.caption(widgets.md_escape(state["message"]))
        st.markdown("**Iteration timeline**")
        st.caption(widgets.md_escape(tl.baseline_line(ws, state)))
        frame = tl.timeline_frame(ws, state, order)
        if frame.empty:
            st.caption("No round started yet.")
        else:
            st.dataframe(widgets.dash_missing(frame), hide_index=True, key="_sp_timeline")
        table = selfplay_results(job)
        if not table or (not table.get("baseline") and not any(r.get("mean") is not None for it in
                                                                 table.get("iterations", []) for r in it["rows"])):
            st.caption("Results appear once the starting model is evaluated.")
            return
        st.markdown("**Results**")
        st.dataframe(sv.table_frame(table), hide_index=True, key="_sp_table",
                     column_config={"mean": st.column_config.NumberColumn(format="%.3f")})
        st.caption(sv.interval_caption(table))
        st.plotly_chart(sv.results_figure(table), key="_sp_chart", config={"displaylogo": False})

    draw()


def _lineage(job: jobs.Job, order: list[str]) -> None:
    state = selfplay_state(job)
    rounds = tl.evolve_rounds(state, order)
    if not rounds:
        return
    st.markdown("**Lineage of the rewrites**")
    chosen = st.selectbox("Round", list(rounds), key="_sp_lineage_round")
    try:
        kept, dropped = tl.lineage(ws, rounds[chosen], state.get("seeds"))
    except MarginLensError as exc:
        widgets.show_error(exc)
        return
    st.caption(f"{len(kept)} kept, {len(dropped)} dropped (evolve job {tl.child_state(ws, rounds[chosen])})")
    st.dataframe(kept, hide_index=True, key="_sp_kept")
    if len(dropped):
        st.caption("Dropped by the filters, with the reason")
        st.dataframe(dropped, hide_index=True, key="_sp_dropped")


def _results(picked: dict[str, EndpointChoice | None]) -> None:
    st.subheader("Self-play runs")
    runs = {j.id: j for j in jobs.list_jobs(ws, "selfplay")}
    if not runs:
        st.caption("No self-play run yet.")
        return
    ids = list(runs)
    current = st.session_state.get(JOB_KEY)
    if current in ids and st.session_state.get("_sp_run") not in ids:
        st.session_state["_sp_run"] = current
    job_id = st.selectbox("Run", ids, format_func=lambda i: sv.job_label(runs[i]), key="_sp_run")
    st.session_state[JOB_KEY] = job_id
    job = runs[job_id]
    spec = sps.SelfPlaySpec.from_params(job.spec["params"])
    status = job_panel(job, title="self-play", on_resume=lambda: _submit(spec, picked),
                       cancel_help="cancels the running child job too; Resume continues where it stopped")
    order = [cell_key(metric, seed) for metric, seed in spec.chains]
    _timeline(job, order, status.live)
    for line in estimate_vs_actual(job.dir):
        st.caption(widgets.md_escape(f"Estimate vs actual · {line}"))
    _lineage(job, order)


st.subheader("New run")
_results(_form())
