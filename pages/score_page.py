"""Score: run the policy / reference / reward scorers as background jobs and watch them from any tab."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from marginlens.app import access, margin_hints, navigation, ray_fields, readers, score_form, widgets
from marginlens.app.job_panel import job_panel
from marginlens.app.state import page_with_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.score_tables import list_score_tables

ws, dataset = page_with_dataset("Score")
own_scores = readers.has_scores(str(ws.root), dataset, ws.dataset_manifest(dataset)["fingerprint"])
sources = margin_hints.dataset_sources(ws, dataset)
missing = margin_hints.explicit_words(sources, here=True) if sources else None
if missing:
    st.info(missing)
# before the form draws them: the source (and sample) the start page sent, or this dataset's default
score_form.settle_source(st.session_state, dataset, own_scores, navigation.arrival("score"))

if access.operator_only("scoring"):
    # Outside the form, as on the Audit page: an endpoint picked for a Resume counts without a form submit.
    rating_first = st.session_state.get(score_form.SOURCE_KEY) == score_form.RATING_SOURCE
    with st.expander("LLM rating endpoint (for the LLM-rating source only)", expanded=rating_first):
        rating = access.endpoint_picker("Endpoint", score_form.ENDPOINT_KEY)
    with st.form("score_form"):
        st.markdown("**Implicit margin** (log-probs under a causal LM)")
        c1, c2 = st.columns(2)
        policy = c1.text_input("Policy model (Hub id or folder)", value=score_form.DEFAULT_POLICY, key="_score_policy",
                               help="empty: skip the implicit margin")
        reference = c2.text_input("Reference model (optional: DPO-form margin)", value="", key="_score_reference")
        st.markdown("**Explicit margin**")
        e1, e2 = st.columns([1, 2])
        source = e1.radio("Source", score_form.EXPLICIT_SOURCES, key=score_form.SOURCE_KEY,
                          format_func=lambda s: score_form.source_label(s, own_scores))
        explicit_value = e2.text_input("Columns or model", value="", help=score_form.EXPLICIT_VALUE_HELP,
                                       key="_score_explicit_value")
        st.caption(margin_hints.reward_model_words(dataset))
        rating_calls = st.number_input("LLM rating: max calls (0: no limit)", min_value=0, value=0, step=100,
                                       help="the rater's endpoint is picked above; its model name goes in "
                                            "'Columns or model'")
        s1, s2, s3, s4, s5 = st.columns(5)
        device = s1.selectbox("Device", ("auto", "cpu", "cuda"))
        dtype = s5.selectbox("Dtype", score_form.DTYPES, help=score_form.DTYPE_HELP)
        max_length = s2.number_input("Max length (tokens)", min_value=16, value=score_form.DEFAULT_MAX_LENGTH,
                                     step=128)
        max_prompt = s3.number_input("Max prompt length", min_value=8, value=score_form.DEFAULT_MAX_PROMPT_LENGTH,
                                     step=128)
        mode = s4.selectbox("Tokenisation", score_form.MODES,
                            help="clean: generation prompt in the prompt; reference: the paper's exact preprocessing")
        p1, p2 = st.columns(2)
        sample = p1.number_input("Sample (pairs; 0 = all)", min_value=0, step=10, key=score_form.SAMPLE_KEY,
                                 help="score a seeded sample: the same pairs every time, and a larger sample "
                                      "reuses the pairs already scored")
        seed = p2.number_input("Sample seed", min_value=0, step=1, key=score_form.SEED_KEY)
        ray_fields.draw()  # the engine: this machine or a Ray cluster (operators only)
        submitted = st.form_submit_button("Start scoring", type="primary")

    if submitted:
        try:
            policy, reference, explicit_value = score_form.confined_models(ws, policy, reference, source,
                                                                           explicit_value)
            spec = score_form.build_spec(dataset, policy, reference, source, explicit_value, device, int(max_length),
                                         int(max_prompt), mode)
            spec = score_form.with_dtype(spec, dtype)
            spec = score_form.with_sample(spec, int(sample), int(seed))
            spec = score_form.with_rating(spec, rating, int(rating_calls))
            with st.spinner("Planning (hashing model files) ..."):
                message = score_form.submit(ws, spec, rating)
        except MarginLensError as exc:
            widgets.show_error(exc)
        else:
            st.success(message)
else:
    rating = None


st.subheader("Scoring jobs")
score_jobs = score_form.score_jobs(ws, dataset)
if not score_jobs:
    st.caption("No scoring job for this dataset yet.")
for job in score_jobs:
    job_panel(job, title=score_form.models_label(job),
              on_resume=lambda job=job: score_form.resume(ws, job, [rating] if rating else []))

st.subheader("Finished score tables")
tables = list_score_tables(ws, dataset)
if tables:
    widgets.table(pd.DataFrame(score_form.table_rows(tables)), hide_index=True, width="stretch",
                  column_config={"fingerprint": st.column_config.TextColumn(width="large")})
else:
    st.caption("None yet. Tables appear here when a job finishes; Explore uses the newest by default.")
