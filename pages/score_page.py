"""Score: run the policy / reference / reward scorers as background jobs and watch them from any tab."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from marginlens.app import score_form, widgets
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
        "Columns or reward model", value="",
        help="columns: 'score_chosen,score_rejected' (default), 'A,B' from the source record, or one list "
             "column such as 'all_rm_scores'; reward model: a Hub id or folder")
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


@st.fragment(run_every=score_form.POLL_SECONDS)
def job_panel() -> None:
    """Re-reads the job folders every few seconds without rerunning the page; any tab sees the same jobs."""
    rows = score_form.job_rows(ws, dataset)
    states = {row["job_id"]: row["state"] for row in rows}
    finished_now = [j for j, s in states.items() if s == "done" and st.session_state.get("_score_states", {}).get(j)
                    not in (None, "done")]
    st.session_state["_score_states"] = states
    if finished_now:
        st.rerun()  # a job just finished: rerun the whole page so its table is listed below
    st.subheader("Scoring jobs")
    if not rows:
        st.caption("No scoring job for this dataset yet.")
        return
    for row in rows:
        with st.container(border=True):
            head, actions = st.columns([4, 1])
            head.markdown(f"**{row['state']}** · `{row['job_id']}` · {row['models']}")
            if row["total"]:
                head.progress(min(1.0, row["done"] / row["total"]), text=score_form.progress_text(row))
            else:
                head.caption(row["message"] or "waiting for the worker")
            if row["state"] == "failed":
                head.error(row["message"])
            if row["state"] in ("running", "queued"):
                if actions.button("Cancel", key=f"_cancel_{row['job_id']}"):
                    score_form.cancel(ws, row["job_id"])
                    st.rerun()
            elif row["state"] in ("cancelled", "interrupted", "failed"):
                if actions.button("Resume", key=f"_resume_{row['job_id']}"):
                    score_form.resume(ws, row["job_id"])
                    st.rerun()
            with head.expander("Log"):
                st.code(row["log"] or "(empty)", language=None)


job_panel()

st.subheader("Finished score tables")
tables = list_score_tables(ws, dataset)
if tables:
    st.dataframe(pd.DataFrame(score_form.table_rows(tables)), hide_index=True, width="stretch")
else:
    st.caption("None yet. Tables appear here when a job finishes; Explore uses the newest by default.")
