"""Score: run the policy / reference / reward scorers as background jobs and watch them from any tab."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from marginlens.app import score_form, widgets
from marginlens.app.job_panel import job_panel
from marginlens.app.state import page_with_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.score_tables import list_score_tables

ws, dataset = page_with_dataset("Score")

with st.form("score_form"):
    st.markdown("**Implicit margin** (log-probs under a causal LM)")
    c1, c2 = st.columns(2)
    policy = c1.text_input("Policy model (Hub id or folder)", value=score_form.DEFAULT_POLICY,
                           help="empty: skip the implicit margin")
    reference = c2.text_input("Reference model (optional: DPO-form margin)", value="")
    st.markdown("**Explicit margin**")
    e1, e2 = st.columns([1, 2])
    source = e1.radio("Source", score_form.EXPLICIT_SOURCES, format_func=score_form.EXPLICIT_LABELS.get)
    explicit_value = e2.text_input(
        "Columns or model", value="", help=score_form.EXPLICIT_VALUE_HELP)
    s1, s2, s3, s4 = st.columns(4)
    device = s1.selectbox("Device", ("auto", "cpu", "cuda"))
    max_length = s2.number_input("Max length (tokens)", min_value=16, value=score_form.DEFAULT_MAX_LENGTH, step=128)
    max_prompt = s3.number_input("Max prompt length", min_value=8, value=score_form.DEFAULT_MAX_PROMPT_LENGTH,
                                 step=128)
    mode = s4.selectbox("Tokenisation", score_form.MODES,
                        help="clean: generation prompt in the prompt; reference: the paper's exact preprocessing")
    submitted = st.form_submit_button("Start scoring", type="primary")

if submitted:
    try:
        spec = score_form.build_spec(dataset, policy, reference, source, explicit_value, device, int(max_length),
                                     int(max_prompt), mode)
        with st.spinner("Planning (hashing model files) ..."):
            message = score_form.submit(ws, spec)
    except MarginLensError as exc:
        widgets.show_error(exc)
    else:
        st.success(message)


st.subheader("Scoring jobs")
score_jobs = score_form.score_jobs(ws, dataset)
if not score_jobs:
    st.caption("No scoring job for this dataset yet.")
for job in score_jobs:
    job_panel(job, title=score_form.models_label(job))

st.subheader("Finished score tables")
tables = list_score_tables(ws, dataset)
if tables:
    st.dataframe(pd.DataFrame(score_form.table_rows(tables)), hide_index=True, width="stretch")
else:
    st.caption("None yet. Tables appear here when a job finishes; Explore uses the newest by default.")
