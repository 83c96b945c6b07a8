"""Data: import a preference dataset (as a background "import" job), read its validation report, browse its pairs."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from marginlens.app import access, readers, start_view, uploads, widgets
from marginlens.app.job_panel import is_live, job_panel
from marginlens.app.state import dataset_picker, select_dataset, stop_if_damaged, workspace
from marginlens.app.workspace_check import workspace_check
from marginlens.core import jobs
from marginlens.core.data import import_flags
from marginlens.core.data.formats import FORMATS
from marginlens.core.data.import_job import import_spec, submit_import
from marginlens.core.data.ingest import parse_mapping
from marginlens.core.errors import MarginLensError
from marginlens.core.job_status import JobState
from marginlens.core.workspace import name_for_source

IMPORT_JOB = "_data_import_job"  # the import this session started
IMPORT_SHOWN = "_data_import_shown"  # the finished import whose dataset the picker moved to
NAME_KEY, NAME_SUGGESTED = "_data_name", "_data_name_suggested"

ws = workspace()
st.title("Data")

def _import_form() -> None:
    roots = access.data_roots()
    upload_tab, path_tab, hub_tab = st.tabs(["Upload a file", "Path on the server", "Hub id"])
    with upload_tab:
        uploaded = st.file_uploader("Preference data", type=uploads.UPLOAD_TYPES)
        if uploaded is not None:
            st.caption(f"Stored under the workspace's uploads/ by its content hash; "
                       f"{widgets.md_escape(uploads.label(uploaded.name))} is only its label.")
    with path_tab:
        if roots:
            server_path = st.text_input("File or save_to_disk folder", key="_data_server_path",
                                        placeholder=f"{roots[0]}/prefs.jsonl",
                                        help="under " + ", ".join(str(r) for r in roots))
        else:
            server_path = ""
            st.info("This dashboard reads no folder of the server: upload the file instead. Which server folders "
                    "it may read is the operator's choice when starting it, from the command line only "
                    "(`marginlens app --data-root DIR`); ask whoever runs it.")
    with hub_tab:
        hub_text = st.text_input("Hub dataset id (needs network)", placeholder="owner/name", key="_data_hub_id")
    cols = st.columns(4)
    # Suggested from the source until the user types a name of their own, which a new source never overwrites.
    suggestion = name_for_source(uploads.label(uploaded.name) if uploaded else server_path or hub_text)
    if st.session_state.get(NAME_KEY, "") in ("", st.session_state.get(NAME_SUGGESTED, "")):
        st.session_state[NAME_KEY] = suggestion
    st.session_state[NAME_SUGGESTED] = suggestion
    name = cols[0].text_input("Name", key=NAME_KEY)
    fmt = cols[1].selectbox("Format", ("auto", *FORMATS))
    policy = cols[2].selectbox("Bad rows", ("skip", "strict"), help="skip: import the rest and keep a rejects file")
    max_prompt = cols[3].number_input("Max prompt characters (0 = no limit)", min_value=0, value=0, step=1000)
    mapping_text = st.text_input("Column mapping (unknown layouts)", placeholder="prompt=question,chosen=good,rejected=bad")
    empty = st.radio("Empty responses", ("keep", "reject"), horizontal=True, key="_data_empty_responses",
                     format_func={"keep": "keep and flag (empty_response)", "reject": "reject as bad rows"}.get,
                     help="HH-RLHF prefers an empty answer to some harmful requests: a legitimate preference")
    replace = st.checkbox("Replace a dataset with the same name")
    if not st.button("Import", type="primary"):
        return
    try:
        # Every source is checked before anything is written or read: the browser's file name never becomes a
        # path, a typed path must lie under a data root, a Hub id must not name a file here.
        if uploaded is not None:
            source = str(uploads.store_upload(ws, uploaded.name, uploaded.getvalue()))
        elif server_path.strip():
            source = str(access.server_path(server_path, "Path on the server"))
        elif hub_text.strip():
            source = uploads.hub_id(hub_text)
        else:
            raise MarginLensError("choose a file, a path or a Hub id first")
        request = import_spec(source, name.strip(), format=fmt, mapping=parse_mapping(mapping_text),
                              policy=policy, max_prompt_chars=max_prompt or None, replace=replace,
                              allow_empty_responses=empty == "keep")
        st.session_state[IMPORT_JOB] = submit_import(ws, request).id
    except MarginLensError as exc:
        widgets.show_error(exc)


with st.expander("Import a dataset", expanded=not ws.dataset_names()):
    if access.operator_only("importing a dataset"):
        _import_form()


# The import this session started, and any other one still running (from another tab).
mine = st.session_state.get(IMPORT_JOB)
for job in jobs.list_jobs(ws, "import"):
    if job.id != mine and not is_live(job):
        continue
    spec = job.spec.get("params", {})
    status = job_panel(job, title=f"import of {spec.get('source')} as {spec.get('name')}")
    if job.id == mine and status.state is JobState.DONE:
        result = job.result() or {}
        if st.session_state.get(IMPORT_SHOWN) != job.id:
            # once: the picker moves to what was just imported, however fast the job finished
            st.session_state[IMPORT_SHOWN] = job.id
            select_dataset(result.get("name"))
        # the summary is one line per fact: keep its line breaks in markdown
        # the summary is core's, worded for the CLI: its pointer to `marginlens info` is the report below here
        summary = str(result.get("summary", "imported")).replace(f"see `marginlens info {result.get('name')}`",
                                                                 "the validation report below lists them")
        st.success(widgets.md_escape(summary).replace("\n", "  \n"))

names = ws.dataset_names()
if not names:
    if access.can_operate():
        st.info("No datasets yet: import one above, or add the built-in demo (257 pairs, already scored) with "
                "the button below.")
        start_view.demo_button(ws, "_data_demo", st.columns([1, 3])[0])
    else:
        st.info("No datasets yet: the operator imports one here.")
    st.stop()

st.subheader("Datasets")
widgets.table(readers.dataset_rows(ws, names), hide_index=True, width="stretch")  # a damaged one listed as such
workspace_check(ws)

name = dataset_picker(names)
stop_if_damaged(ws, name)
manifest = readers.manifest(ws, name)
rows = manifest["rows"]
c1, c2, c3, c4 = st.columns(4)
c1.metric("Pairs", f"{rows['imported']:,}")
c2.metric("Rows read", f"{rows['read']:,}")
c3.metric("Rejected", f"{rows['rejected']:,}")
flagged = import_flags.flagged_pairs(ws, name) if manifest.get("flagged") else 0
c4.metric("Kept with flags", f"{flagged:,}", help=import_flags.FLAGS_KEPT)

st.subheader("Validation report")
if manifest.get("rejects"):
    widgets.table(pd.DataFrame(sorted(manifest["rejects"].items()), columns=["reason", "rows"]), hide_index=True)
    st.caption(f"Rejected rows (with the original record) are in `{ws.rejects_path(name)}`.")
    widgets.table(readers.rejects(str(ws.root), name, manifest["fingerprint"]), hide_index=True, width="stretch")
else:
    st.write("Every row was imported.")
if flagged:
    counts = import_flags.flag_counts(manifest["flagged"])
    both = " (a pair may carry two flags)" if sum(c.pairs for c in counts) > flagged else ""
    st.markdown(f"**Kept with flags: {flagged:,} of {rows['imported']:,} pairs**{both}. "
                + import_flags.FLAGS_KEPT.replace("flagged=false", "`flagged=false` (on Explore)"))
    # a list, not a table: a table cut each meaning off at its column's width
    st.markdown("\n".join(f"- `{c.flag}` · {c.pairs:,} pair{'s' if c.pairs != 1 else ''}: {widgets.md_escape(c.meaning)}"
                           for c in counts))
if manifest.get("warnings"):
    st.caption(f"Row details ({manifest.get('warnings_total', len(manifest['warnings'])):,} flagged rows say more):")
    widgets.table(pd.DataFrame(manifest["warnings"]), hide_index=True, width="stretch")

st.subheader("Pairs")
page_size = 50
pages = max(1, -(-rows["imported"] // page_size))
page = st.number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, value=1)
widgets.table(
    readers.preview(str(ws.root), name, manifest["fingerprint"], (page - 1) * page_size, page_size),
    hide_index=True,
    width="stretch",
)
