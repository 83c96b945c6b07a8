"""Dashboard entry: `marginlens app` (or `streamlit run app/main.py` in a checkout)."""

from __future__ import annotations

import streamlit as st
from marginlens.app.navigation import PAGES, page
from marginlens.app.state import workspace

st.set_page_config(page_title="MarginLens", page_icon=":material/balance:", layout="wide")
navigation = st.navigation([page(name) for name in PAGES])
st.sidebar.caption(f"Workspace: `{workspace().root}`")
navigation.run()
