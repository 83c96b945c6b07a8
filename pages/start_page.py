"""Start: what M_AP is, and for the picked dataset a checklist of the loop with a button to each open step."""

from __future__ import annotations

import streamlit as st
from marginlens.app import access, navigation, start_view
from marginlens.app.state import dataset_picker, stop_if_damaged, workspace

ws = workspace()
may_write = access.can_operate()
visible = tuple(navigation.PAGES) if may_write else navigation.VIEWER_PAGES
st.title("Start")
st.markdown(start_view.M_AP)

names = ws.dataset_names()
if not names:
    st.subheader("1 · Get a dataset")
    if not may_write:
        st.info("No dataset yet: the operator imports one on the Data page.")
        st.stop()
    st.info("No dataset yet: import your preference data (a file, a server path or a Hub id) on the Data page, "
            "or add the built-in demo (257 pairs, already scored) to try the whole loop in a few minutes.")
    c1, c2, _ = st.columns([1, 1, 2])
    if c1.button("Import a dataset", type="primary", key="_start_import", width="stretch",
                 help="opens the Data page's import form"):
        navigation.go("data")
    start_view.demo_button(ws, "_start_demo", c2)
    st.stop()

dataset = dataset_picker(names)
stop_if_damaged(ws, dataset, tables=True)
progress = start_view.progress_for(ws, dataset)
if progress is None:
    st.warning("This dataset's score tables cannot be read right now; the Score page lists them.")
    st.stop()
note = start_view.rating_note(progress, may_write)
if note:
    st.info(note)
start_view.checklist(progress, may_write, visible)
