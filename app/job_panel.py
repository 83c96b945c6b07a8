"""One panel for a background job, on every page that runs one: state, progress and ETA, the last
error, the log, Cancel and Resume.

Who started the job is shown beside it (its spec's "started_by"); Cancel and Resume are the operator's alone
(access.can_operate). It reads the job folder only (core.jobs), so a refresh or a second tab shows the same
job, and it polls
(a fragment re-run every POLL_SECONDS, not the page) only while the job is live. When the job stops,
the whole page reruns once: polling ends, and whatever the page draws from the outcome (a new score
table, an imported dataset, a report) appears.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st
from marginlens.app import access, ray_fields
from marginlens.app.widgets import md_escape, show_error
from marginlens.core.errors import MarginLensError
from marginlens.core.integrity import DamagedFile
from marginlens.core.job_status import POLL_SECONDS, JobState, JobStatus, details, progress_line, unit_of
from marginlens.core.jobs import Job, resume

_SEEN = "_job_panel_states"  # job id -> the state this session last drew


def job_panel(
    job: Job,
    *,
    title: str,
    on_resume: Callable[[], object] | None = None,
    cancel_help: str | None = None,
) -> JobStatus:
    """Draw `job`'s panel; returns its status as of this page run.

    `on_resume`: how to resubmit it when the job's own spec is not enough (an API key for the worker's
    environment); by default core.jobs.resume.
    """
    try:
        status = job.status()
    except DamagedFile as exc:  # its file, what is wrong, the repair: the page around it goes on
        with st.container(border=True):
            st.markdown(f"**damaged** · `{job.id}` · {md_escape(title)}")
            show_error(exc)
        return JobStatus(JobState.INTERRUPTED, message=str(exc))

    @st.fragment(run_every=POLL_SECONDS if status.live else None)
    def panel() -> None:
        access.restore_actor()  # a fragment rerun runs in a fresh thread, without main.py's sign_in
        try:
            now = job.status()
        except DamagedFile as exc:  # damaged while the panel polled
            show_error(exc)
            return
        seen = st.session_state.setdefault(_SEEN, {})
        previous, seen[job.id] = seen.get(job.id), now.state.value
        if previous is not None and JobState(previous).live and not now.live:
            st.rerun()  # the page draws what the job made
        _draw(job, now, title, on_resume, cancel_help)

    panel()
    return status


def is_live(job: Job) -> bool:
    """Whether a worker has `job` (or is about to); a job whose status.json is damaged is not (its panel, if
    drawn, shows the damage)."""
    try:
        return job.status().live
    except DamagedFile:
        return False


def _draw(job: Job, status: JobStatus, title: str, on_resume: Callable[[], object] | None, cancel_help: str | None) -> None:
    with st.container(border=True):
        head, actions = st.columns([5, 1])
        who = job.spec.get("started_by")
        head.markdown(f"**{status.state}** · `{job.id}` · {md_escape(title)}"
                      + (f" · started by {md_escape(who)}" if who else ""))
        if status.total:
            head.progress(status.fraction or 0.0, text=progress_line(status, unit_of(job.kind)))
        elif status.live:
            head.caption(md_escape(status.message or "waiting for the worker"))
        figures = details(job.kind, status)  # the kind's own numbers: tokens/s, requests, loss, ...
        if figures:
            head.text(figures)
        operator = access.can_operate()
        ray = ray_fields.ray_line(status.extra or {}, operator)  # a score job on a Ray cluster: blocks, actors
        if ray:
            head.markdown(ray)
        if status.error:
            with head:  # may quote a row or a server's answer: escaped; its server-side detail for operators only
                show_error(status.error if operator else "the job stopped with an error; an operator sees why")
        if operator and status.live:
            if actions.button("Cancel", key=f"_job_cancel_{job.id}", help=cancel_help):
                job.cancel()
                st.toast(f"Cancel requested: {job.id} stops at its next check.")
        elif operator and status.resumable:
            if actions.button("Resume", key=f"_job_resume_{job.id}", help="continues from what it already wrote"):
                try:
                    if on_resume is not None:
                        on_resume()
                    else:
                        resume(job.workspace, job)
                except MarginLensError as exc:  # e.g. the endpoint does not answer: said, the panel stays
                    with head:
                        show_error(exc)
                else:
                    st.rerun()
        if operator:  # a log holds tracebacks and server paths: not for viewers (docs/SECURITY.md)
            with head.expander("Log"):
                st.code(job.log_tail(15) or "(empty)", language=None)
