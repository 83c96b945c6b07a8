"""Audit: does an LLM judge (any OpenAI-compatible endpoint) agree with the dataset's labels, per
selection subset? Plan and estimate an audit, run it as a background job, read the paper-style chart
and the verdicts, and flag the pairs the judge shows to be noisy. All work is core.audit / core.data.flags.

The judge's endpoint is picked with access.endpoint_picker: a configured one carries the server's key to its own
URL, a typed URL only the key typed beside it (kept in this session's widget state), and either reaches only the
worker's environment (app.audit_start): never a job spec, a verdict, a log or a file. Viewers read the audits;
starting, resuming and flagging are the operator's. Judge answers and pair texts
are untrusted: they are shown in dataframes and code blocks, never as markdown or HTML.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from marginlens.app import access, audit_start, explore_state, llm_endpoints, navigation, widgets
from marginlens.app.job_panel import job_panel
from marginlens.app.margin_hints import cannot_run_words
from marginlens.app.state import page_with_dataset
from marginlens.core.audit.agreement_chart import agreement_figure, chart_frame
from marginlens.core.audit.audit_job import list_audits
from marginlens.core.audit.audit_params import DEFAULT_CONCURRENCY, AuditParams, audit_params, reask_params
from marginlens.core.audit.audit_report import (
    audit_report,
    disagreements,
    estimate_cost,
    flag_disagreements,
    no_decisive_note,
    verdict_rows,
    verdicts_for_pair,
)
from marginlens.core.audit.subsets import (
    DEFAULT_N,
    DEFAULT_SAMPLE_SEED,
    build_subsets,
    sample_subsets,
    unique_pairs,
)
from marginlens.core.chat_client import Endpoint
from marginlens.core.data.flags import FLAG_ACTIONS, flag_pairs, flags_summary, load_flags, unflag_pairs
from marginlens.core.errors import MarginLensError
from marginlens.core.jobs import get_job
from marginlens.core.selection.margin_sources import margin_sources, without_explicit_words
from marginlens.core.selection.margins import pair_texts, scored_counts
from marginlens.core.selection.metrics import MetricParams, metric_names
from marginlens.core.verdicts import VerdictStore

ENDPOINT_KEY = "_audit_endpoint"  # the judge endpoint picker's widgets (access.endpoint_picker)
PLAN = "_audit_plan"
NOTICE = "_audit_notice"
NEXT_JOB = "_audit_next_job"
AUTO_PAIR = "_audit_pair_auto"  # the pair the page picked itself (it follows the verdicts as they arrive)
SHOWN_LABEL = "_audit_job_label"  # the audit selector's label as last drawn (it carries the job's state)
ACTION_LABELS = {"exclude": "exclude from exports", "swap": "swap chosen/rejected in exports"}
# the short columns first: the rationales are long, and whatever follows them is off screen at 1400 px
TABLE_COLUMNS = ["pair_id", "subsets", "agrees", "judge_label", "ab_answer", "ba_answer", "consistent", "invalid",
                 "flag_action", "ab_rationale", "ba_rationale"]
YES_NO = {True: "yes", False: "no"}

ws, dataset = page_with_dataset("Audit")
scorers = explore_state.scorers(ws, dataset)
defaults = explore_state.controls()
operator = access.operator_only("running an audit or flagging pairs")
try:  # a sampled scoring: the audit's subsets come from the scored pairs only, say how many
    n_scored, n_total = scored_counts(explore_state.margins_for(ws, dataset, scorers))
except MarginLensError:
    n_scored = n_total = 0
if n_scored < n_total:
    st.caption(f"{n_scored:,} of {n_total:,} pairs scored: the audit's subsets come from the scored pairs"
               + (" (the Score page scores more)." if operator else "."))
try:  # the metrics whose margins this dataset has; a missing explicit margin is said once, plainly
    sources = margin_sources(explore_state.margins_for(ws, dataset, scorers))
except MarginLensError:
    sources = None
if sources is not None and not sources.explicit:
    # In the dashboard's words (core's note names CLI commands): the Score page is where an operator adds one.
    why = ("no reward scores of its own, no reward or rating table" if not (sources.table and sources.table_values)
           else f"its reward or rating table has {sources.table_values[0]:,} valid of {sources.table_values[1]:,} "
                "values and gives no pair a margin")
    st.info(f"No explicit margin on this dataset ({why}), so the M_AP and explicit subsets cannot be audited; "
            f"{without_explicit_words('subset')} can."
            + (" To add one, rate each response with an LLM (any OpenAI-compatible endpoint) or a reward model on "
               "the Score page." if operator else ""))
    if operator:
        st.page_link(navigation.page("score"), label="Add an explicit margin on the Score page",
                     icon=":material/speed:")
judge_endpoint = None
if operator:
    # Outside the form: an endpoint picked for a Resume counts without a form submit.
    judge_endpoint = access.endpoint_picker("Judge endpoint", ENDPOINT_KEY, url_placeholder="https://api.openai.com/v1")
    with st.form("_audit_form"):
        model = st.text_input("Judge model", key="_audit_model", placeholder="gpt-4o")
        # A row of its own: in a quarter-width column the chosen subsets showed two chips and a sliver.
        subsets = st.multiselect("Subsets (top-k of each metric)", metric_names(),
                                 default=list(sources.paper_runnable if sources is not None else metric_names()),
                                 key="_audit_subsets")
        s = st.columns(3)
        n = s[0].number_input("Pairs per subset", min_value=1, value=DEFAULT_N, step=10, key="_audit_n")
        ratio = s[1].number_input("Top-k ratio", min_value=0.01, max_value=1.0, value=float(defaults.ratio),
                                  step=0.05, key="_audit_ratio")
        weight = s[2].number_input("M_AP weight w", min_value=0.0, value=float(defaults.weight), step=0.1,
                                   key="_audit_weight", help=widgets.WEIGHT_HELP)
        b = st.columns(4)
        max_calls = b[0].number_input("Max calls (0: no limit)", min_value=0, value=0, step=100,
                                      key="_audit_max_calls")
        max_tokens = b[1].number_input("Max tokens (0: no limit)", min_value=0, value=0, step=10_000,
                                       key="_audit_max_tokens")
        concurrency = b[2].number_input("Concurrency", min_value=1, max_value=64, value=DEFAULT_CONCURRENCY,
                                        key="_audit_concurrency")
        timeout = b[3].number_input("Timeout per request (s)", min_value=1.0, value=60.0, step=10.0,
                                    key="_audit_timeout")
        p = st.columns(4)
        max_output = p[0].number_input("Max answer tokens", min_value=1, value=128, step=32, key="_audit_max_output")
        seed = p[1].number_input("Sampling seed", value=DEFAULT_SAMPLE_SEED, step=1, key="_audit_seed")
        price_in = p[2].number_input("USD per 1M input tokens", min_value=0.0, value=0.0, key="_audit_price_in",
                                     help="optional: for the cost estimate")
        price_out = p[3].number_input("USD per 1M output tokens", min_value=0.0, value=0.0, key="_audit_price_out")
        estimate_clicked = st.form_submit_button("Estimate cost")

    if estimate_clicked:
        try:
            if sources is not None and (lacking := [m for m in subsets if m not in sources.runnable]):
                raise MarginLensError(cannot_run_words(lacking, sources))  # not core's CLI words
            picked = build_subsets(ws, dataset, metrics=tuple(subsets), ratio=float(ratio),
                                   params=MetricParams(weight=float(weight)), policy_fp=scorers["policy"],
                                   reward_fp=scorers["reward"])
            endpoint = Endpoint(model.strip(), llm_endpoints.chosen_url(judge_endpoint, "Judge endpoint"),
                                timeout=float(timeout), max_output_tokens=int(max_output))
            params = audit_params(dataset, sample_subsets(picked, int(n), int(seed)), endpoint,
                                  max_calls=int(max_calls) or None, max_tokens=int(max_tokens) or None,
                                  concurrency=int(concurrency))
            prices = (price_in, price_out) if price_in or price_out else (None, None)
            st.session_state[PLAN] = {"dataset": dataset, "params": params,
                                      "estimate": estimate_cost(ws, params, *prices)}
        except MarginLensError as exc:
            st.session_state.pop(PLAN, None)
            widgets.show_error(exc)

plan = st.session_state.get(PLAN)
if operator and plan and plan["dataset"] == dataset:
    est = plan["estimate"]
    m = st.columns(4)
    m[0].metric("Calls to make", f"{est.calls:,}", help=f"{est.calls_stored:,} of {est.calls_total:,} "
                "judgments are already stored (from earlier audits) and are not paid again")
    m[1].metric("Pairs", f"{est.pairs:,}", help="each is judged twice, once in each order")
    m[2].metric("Tokens (worst case)", f"{est.tokens:,}")
    m[3].metric("Cost", "—" if est.usd is None else f"${est.usd:.4f}")
    if not est.fits_budget:
        st.warning("The budget stops the audit before every call is made: the report will be partial.")
    if st.button("Start audit", type="primary", key="_audit_start"):
        try:
            job = audit_start.start(ws, plan["params"], [judge_endpoint],
                                    on_warning=st.warning)  # e.g. the model is not in the server's list
        except MarginLensError as exc:
            widgets.show_error(exc)
        else:
            st.session_state["_audit_job"] = job.id
            st.success(f"Audit job {job.id} is {job.status().state}.")

audits = list_audits(ws, dataset)
if not audits:
    st.info("No audit of this dataset yet" + (": pick the endpoint, estimate the cost, then start one." if operator
                                               else "."))
    st.stop()
titles, labels = {}, {}
for job in audits:
    spec_params = job.spec.get("params", {})
    titles[job.id] = (f"judge {spec_params.get('endpoint', {}).get('model')} · "
                      f"{len(unique_pairs(spec_params['samples'])):,} pairs · {job.spec.get('created', '')}"
                      + (f" · re-ask {spec_params['reask']}" if spec_params.get("reask") else ""))
    labels[job.id] = f"{titles[job.id]} · {job.status().state}"
if st.session_state.get(NEXT_JOB) in labels:  # a re-ask started below, shown from this run on
    st.session_state["_audit_job"] = st.session_state.pop(NEXT_JOB)
if st.session_state.get("_audit_job") not in labels:
    st.session_state["_audit_job"] = audits[0].id
if st.session_state.get(SHOWN_LABEL) not in (None, labels[st.session_state["_audit_job"]]):
    # The browser keeps the label it drew as the selected value: a job that has since ended would stay
    # "· queued" there. Setting the value again sends the new label.
    st.session_state["_audit_job"] = st.session_state["_audit_job"]
st.subheader("Audits")
job_id = st.selectbox("Audit", list(labels), format_func=labels.get, key="_audit_job")
st.session_state[SHOWN_LABEL] = labels[job_id]


job = get_job(ws, job_id)
status = job_panel(job, title=titles[job_id],
                   on_resume=lambda: audit_start.start(ws, AuditParams.from_dict(job.spec["params"]), [judge_endpoint]))
if status.extra.get("budget_stop"):
    st.warning("Stopped at the budget. Raise max calls / tokens and start again: stored verdicts are reused.")

params = AuditParams.from_dict(job.spec["params"])
judge = params.judge_model
report = audit_report(ws, params)
overall = report["overall"]
rows = verdict_rows(ws, params)
frame = pd.DataFrame(rows)
# no rows (a job whose spec samples no pair): a frame without columns, read as "no verdict yet"
answered = (frame["ab_answer"].notna() | frame["ba_answer"].notna() | frame["invalid"].gt(0)) if rows else \
    pd.Series(dtype=bool)
if not answered.any():  # an empty chart and a table of None say nothing yet
    st.info("No verdict yet: the agreement chart and the verdict table appear with the judge's first answers.")
    st.stop()
if overall["pending"]:
    st.caption(f"{overall['pending']:,} of {overall['n']:,} sampled pairs are not judged yet: the numbers are partial.")
if note := no_decisive_note(overall, live=status.live):
    st.info(note)  # in place of a chart of empty bars
else:
    st.plotly_chart(agreement_figure(report), key="_audit_chart")
# Full width (beside the chart the last columns were cut off), as text: the browser draws an empty cell as
# "None" whatever a Styler says, so an undefined statistic is written "—" here.
stats = chart_frame(report)
for column, fmt in (("agreement", "{:.0%}"), ("ci_low", "{:.0%}"), ("ci_high", "{:.0%}"),
                    ("position_consistency", "{:.0%}"), ("kappa", "{:.2f}")):
    stats[column] = [fmt.format(v) if v is not None and v == v else "—" for v in stats[column]]  # v != v: NaN
widgets.table(stats, hide_index=True, width="stretch", column_config={
                 "ci_low": st.column_config.Column("95% CI low"), "ci_high": st.column_config.Column("95% CI high"),
                 "decisive": st.column_config.Column("decisive pairs"), "n": st.column_config.Column("pairs"),
                 "position_consistency": st.column_config.Column("position consistency"),
                 "invalid": st.column_config.Column("off-format answers")})
st.caption("agreement: share of decisive pairs (the same response named in both orders) where the judge prefers "
           "the dataset's chosen response, with a Wilson 95% interval; kappa: label position vs the judge's answer "
           "over single judgments (both orders balance the positions, so it is 2 x their agreement - 1); position "
           "consistency: pairs with two valid answers that name the same response (position bias lowers it).")

if notice := st.session_state.pop(NOTICE, None):
    st.success(notice)
reask = reask_params(VerdictStore.for_dataset(ws, params.dataset), params) if operator and not status.live else None
if reask is not None:
    n_reask = len(reask.pending(VerdictStore.for_dataset(ws, params.dataset)))
    if st.button(f"Re-ask the judge for {n_reask} off-format answers", key="_audit_reask",
                 help=f"{n_reask} new calls to {judge}, charged like any other and recorded as re-ask round "
                      f"{reask.reask}; the answers they replace stay in the verdict file"):
        try:
            again = audit_start.start(ws, reask, [judge_endpoint])
        except MarginLensError as exc:
            widgets.show_error(exc)
        else:
            st.session_state[NEXT_JOB] = again.id
            st.rerun()

st.subheader("Verdicts")
frame = frame[answered].reset_index(drop=True)
if not answered.all():
    st.caption(f"{int((~answered).sum()):,} sampled pairs have no answer yet and are not listed.")
frame["subsets"] = frame["subsets"].str.join(", ")
for column in ("agrees", "consistent"):  # None (no decisive answer) would show as "None"
    frame[column] = frame[column].map(lambda v: "—" if pd.isna(v) else YES_NO[bool(v)])
for column in ("judge_label", "ab_answer", "ba_answer", "ab_rationale", "ba_rationale", "flag_action"):
    frame[column] = frame[column].fillna("—")
only = st.toggle("Only pairs the judge reverses", key="_audit_only_disagreements")
shown = frame[frame["agrees"].eq("no")] if only else frame
clicked = widgets.table_with_pick(shown[TABLE_COLUMNS].reset_index(drop=True), key="_audit_table")
pair_ids = frame["pair_id"].tolist()
if clicked:
    st.session_state["_audit_pair"] = clicked
    st.session_state.pop(AUTO_PAIR, None)  # the user's pick, even when it is the page's own
picked = st.session_state.get("_audit_pair")
# A pick the page made itself follows the verdicts as they arrive (the first reversed pair once there is
# one); a pair the user picked stays.
if picked not in pair_ids or picked == st.session_state.get(AUTO_PAIR):
    reversed_ids = frame.loc[frame["agrees"].eq("no"), "pair_id"].tolist()
    st.session_state["_audit_pair"] = st.session_state[AUTO_PAIR] = (reversed_ids or pair_ids)[0]
pair_id = st.selectbox("Pair", pair_ids, key="_audit_pair", help="or click a row in the table",
                       on_change=lambda: st.session_state.pop(AUTO_PAIR, None))  # the user's pick stays

flags = load_flags(ws, dataset)
current = flags.get(pair_id)
if operator:  # flags change what every export leaves out: the operator's
    action = st.radio("Flag action", FLAG_ACTIONS, horizontal=True, key="_audit_action", format_func=ACTION_LABELS.get)
    reversed_here = disagreements(ws, dataset, judge, params.prompt_version, params.pair_ids)
    f1, f2, f3 = st.columns(3)
    if f1.button("Flag as noisy", key="_audit_flag", type="primary"):
        flag_pairs(ws, dataset, [pair_id], action=action, reason=f"flagged on the Audit page (judge {judge})",
                   judge_model=judge)
        st.session_state[NOTICE] = f"Flagged {pair_id} ({action})."
        st.rerun()
    if f2.button("Remove flag", key="_audit_unflag", disabled=current is None):
        unflag_pairs(ws, dataset, [pair_id])
        st.session_state[NOTICE] = f"Removed the flag of {pair_id}."
        st.rerun()
    if f3.button(f"Flag all {len(reversed_here)} disagreements", key="_audit_flag_all", disabled=not reversed_here):
        ids = flag_disagreements(ws, dataset, judge, action=action, prompt_version=params.prompt_version,
                                 pair_ids=params.pair_ids)
        st.session_state[NOTICE] = f"Flagged {len(ids):,} pairs the judge reverses ({action})."
        st.rerun()
summary = flags_summary(ws, dataset)
st.caption(f"This pair: {'flagged ' + current['action'] if current else 'not flagged'}. Dataset: "
           f"{len(summary['excluded']):,} pairs flagged exclude, {len(summary['swapped']):,} flagged swap; the Export "
           "page applies them unless its \"Apply audit flags\" switch is off.")

with st.expander("Pair and every stored answer", expanded=False):
    answers = pd.DataFrame(verdicts_for_pair(ws, dataset, pair_id))
    if answers.empty:
        st.caption("No answer stored for this pair yet.")
    else:
        widgets.table(answers[["judge_model", "prompt_version", "order", "choice", "prefers", "rationale", "raw",
                               "invalid_reason"]], hide_index=True, width="stretch")
    for row in pair_texts(ws, dataset, [pair_id]):
        for message in row["prompt"]:
            st.caption(widgets.md_escape(message["role"]))
            widgets.untrusted_text(message["content"])
        chosen_col, rejected_col = st.columns(2)
        with chosen_col:
            st.caption("chosen (the dataset's label)")
            widgets.untrusted_text(row["chosen"])
        with rejected_col:
            st.caption("rejected")
            widgets.untrusted_text(row["rejected"])
