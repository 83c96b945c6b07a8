"""Train: DPO / SimPO on an export as a background job, live curves, stop/resume, and the M_AP loop."""

from __future__ import annotations

import streamlit as st
from marginlens.app import access, navigation, widgets
from marginlens.app import training_view as tv
from marginlens.app.job_panel import job_panel
from marginlens.app.state import workspace
from marginlens.core import jobs
from marginlens.core.errors import MarginLensError
from marginlens.core.job_status import POLL_SECONDS, JobState
from marginlens.core.scoring.models import DEFAULT_POLICY
from marginlens.core.training.presets import (
    DEFAULT_PRESET,
    METHODS,
    TRAINING_EXPLANATION,
    describe_setting,
    list_presets,
)
from marginlens.core.training.runs import final_model_path, rescore, submit_training
from marginlens.core.training.settings import resolve_settings
from marginlens.core.training.train_data import list_exports

JOB_KEY = "train_job"  # the run the page shows; kept across pages
RESCORE_KEY = "train_rescore"  # {train job id: scoring job id} of re-scores started here

ws = workspace()
st.title("Train")

# ---- a new run --------------------------------------------------------------------------------------
st.subheader("New run")
exports = list_exports(ws)
operator = access.operator_only("training")  # the page is not in a viewer's navigation: a second lock
if operator and not exports:
    st.info("No exports yet: pick pairs on Explore, write them on the Export page, then train on them here.")
    st.page_link(navigation.page("export"), label="Go to the Export page", icon=":material/download:")
elif operator:
    c1, c2, c3, c4 = st.columns([3, 1, 2, 1])
    paths = [e["path"] for e in exports]
    by_path = {e["path"]: e for e in exports}
    export = c1.selectbox("Export", paths, format_func=lambda p: tv.export_label(by_path[p]), key="_train_export")
    method = c2.radio("Method", METHODS, format_func=str.upper, key="_train_method", horizontal=True)
    presets = list(list_presets(method))
    preset = c3.selectbox("Preset", presets, index=presets.index(DEFAULT_PRESET[method]), key=f"_train_preset_{method}",
                          help="\n\n".join(f"**{n}**: {p['description']}" for n, p in list_presets(method).items()))
    device = c4.selectbox("Device", ("auto", "cpu", "cuda"), key="_train_device",
                          help="the defaults fit the device: no bf16 or gradient checkpointing on CPU")
    model = st.text_input("Policy model to train (Hub id or folder)", value=DEFAULT_POLICY, key="_train_model")
    try:
        resolved = resolve_settings(method, preset, device=device)
    except MarginLensError as exc:
        widgets.show_error(exc)
        st.stop()
    prefilled = tv.form_values(resolved, method)
    # Keys carry the choice the values came from, so picking another preset refills the form.
    prefix = f"_train_f_{method}_{preset}_{resolved['device']}_"
    # Not an st.form: Enter in a form field submits the form, and a run must start only from its button.
    # Outside a form every edit reruns the page, so the derived values below follow what is typed.
    with st.container(border=True):
        st.caption(f"Parameters from preset `{preset}` fitted to {resolved['device']}; hover a field for its meaning.")
        grid = st.columns(4)
        edited = {}
        for i, (key, value) in enumerate(prefilled.items()):
            box, help_text = grid[i % 4], describe_setting(method, key)
            label = tv.FIELD_LABELS.get(key, key)
            if isinstance(value, bool):
                edited[key] = box.checkbox(label, value=value, help=help_text, key=prefix + key)
            elif isinstance(value, int):
                edited[key] = box.number_input(label, value=value, step=1, help=help_text, key=prefix + key)
            elif isinstance(value, float):
                edited[key] = box.number_input(label, value=value, step=abs(value) / 10 or 0.1, format="%g",
                                               help=help_text, key=prefix + key)
            else:
                edited[key] = box.text_input(label, value=tv.text_value(value), help=help_text, key=prefix + key)
        extra = st.text_area("Other settings (one key=value per line: any DPOConfig / CPOConfig field)",
                             key=prefix + "extra", placeholder="e.g. optim=sgd\nmax_prompt_length=512")
        try:
            overrides = tv.dashboard_overrides(tv.overrides_from_form(prefilled, edited, extra), access.server_path)
            fitted = resolve_settings(method, preset, overrides, device=device)
        except MarginLensError as exc:
            widgets.show_error(exc)
            overrides = fitted = None
        if fitted is not None:
            derived = tv.derived_lines(fitted, method)
            if derived:
                st.caption("Derived from the values above: " + "; ".join(derived))
            warning = tv.batch_warning(fitted, by_path[export].get("rows"))
            if warning:
                st.warning(warning)
        launch = st.button("Launch training", type="primary", key="_train_launch", disabled=fitted is None)
    if launch and overrides is not None:
        try:
            policy = access.model_spec(model, ws.root, "policy model") if model.strip() else None
            with st.spinner("Checking the data and settings, hashing the model ..."):
                job = submit_training(ws, export, method, preset=preset, model=policy, overrides=overrides,
                                      device=device)
        except MarginLensError as exc:
            widgets.show_error(exc)
        else:
            st.session_state[JOB_KEY] = st.session_state["_train_run"] = job.id  # show the new run below
            changed = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"
            st.success(f"Training job {job.id} is {job.status().state} (changed from the preset: {changed})")

# ---- runs -------------------------------------------------------------------------------------------
st.subheader("Runs")
runs = {j.id: j for j in tv.train_jobs(ws)}
if not runs:
    st.caption("No training run yet.")
    st.stop()
ids = list(runs)
current = st.session_state.get(JOB_KEY)
job_id = st.selectbox("Run", ids, index=ids.index(current) if current in ids else 0,
                      format_func=lambda i: tv.job_label(runs[i]), key="_train_run")
st.session_state[JOB_KEY] = job_id
job = runs[job_id]
spec = tv.run_spec(job)
st.caption(f"{spec.method} · preset `{spec.preset}` · model `{spec.model}` · data `{spec.data}` · "
           f"changed: {', '.join(f'{k}={v}' for k, v in (spec.overrides or {}).items()) or 'nothing'}")

status = job_panel(job, title=f"{spec.method} run",
                   cancel_help="saves a checkpoint at the next step; Resume continues from it")


@st.fragment(run_every=POLL_SECONDS if status.live else None)
def run_curves() -> None:
    """Re-reads the metrics file while the run is live, without rerunning the page."""
    access.restore_actor()  # a fragment rerun runs without main.py's sign_in
    curves, explanation = st.columns([3, 1])
    with curves:
        figures = tv.curve_figures(tv.metrics_for(job))
        if not figures:
            st.caption("Curves appear after the first logged step.")
        grid = st.columns(2)
        for i, (key, figure) in enumerate(figures):
            grid[i % 2].plotly_chart(figure, width="stretch", key=f"_curve_{key}", config={"displaylogo": False})
    with explanation:
        st.markdown(TRAINING_EXPLANATION)


run_curves()

# ---- the trained model and the M_AP loop -------------------------------------------------------------
if status.state is JobState.DONE:
    try:
        final = final_model_path(job)
    except MarginLensError as exc:
        st.warning(str(exc))
        st.stop()
    st.markdown("**Final model** (a full model folder: `from_pretrained` loads it)")
    st.code(str(final), language=None)
    st.markdown("**Re-score with the trained model**: the trained model becomes the policy of a new score "
                "table beside the old one, so Explore can compare implicit margins before and after.")
    names = ws.dataset_names()
    if not names:
        st.caption("No dataset in the workspace to re-score.")
        st.stop()
    source = spec.source_dataset
    r1, r2 = st.columns([3, 1])
    dataset = r1.selectbox("Dataset to re-score", names, index=names.index(source) if source in names else 0,
                           key="_train_rescore_dataset", help="default: the dataset the export was selected from")
    started = st.session_state.setdefault(RESCORE_KEY, {})
    if operator and r2.button("Re-score with the trained model", key="_train_rescore"):
        try:
            handle = rescore(ws, dataset, job, device=spec.device or "auto")
        except MarginLensError as exc:
            widgets.show_error(exc)
        else:
            started[job.id] = {"job": handle.job.id if handle.job else None, "policy": handle.fingerprints["policy"],
                               "dataset": dataset}
    launched = started.get(job.id)
    if launched:
        if launched["job"] is None:
            st.success(f"Already scored: table `{launched['policy']}` of {launched['dataset']} exists.")
        else:
            score_job = jobs.get_job(ws, launched["job"])
            job_panel(score_job, title=f"re-score of {launched['dataset']} with the trained model")
        st.caption(f"New policy table: `{launched['policy']}`. Pick it on Explore under \"compare with\".")
        st.page_link(navigation.page("score"),
                     label="Follow the scoring job on the Score page", icon=":material/speed:")
