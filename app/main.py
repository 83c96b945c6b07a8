"""Dashboard entry: `streamlit run app/main.py` (or `marginlens app`)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.state import workspace

PAGES = Path(__file__).resolve().parent.parent / "pages"

st.set_page_config(page_title="MarginLens", page_icon=":material/balance:", layout="wide")
navigation = st.navigation(
    [
        st.Page(PAGES / "data.py", title="Data", icon=":material/database:", default=True),
        st.Page(PAGES / "score.py", title="Score", icon=":material/speed:"),
        st.Page(PAGES / "explore.py", title="Explore", icon=":material/scatter_plot:"),
        st.Page(PAGES / "audit.py", title="Audit", icon=":material/gavel:"),
        st.Page(PAGES / "export.py", title="Export", icon=":material/download:"),
        st.Page(PAGES / "train.py", title="Train", icon=":material/model_training:"),
    ]
)
st.sidebar.caption(f"Workspace: `{workspace().root}`")
navigation.run()
