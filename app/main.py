"""Dashboard entry: the pages `marginlens app` serves (through `server.py`, behind the sign-in gate)."""

from __future__ import annotations

import streamlit as st
from marginlens.app import access
from marginlens.app.navigation import PAGES, VIEWER_PAGES, page
from marginlens.app.serve_config import load
from marginlens.app.state import workspace

st.set_page_config(page_title="MarginLens", page_icon=":material/balance:", layout="wide")
if load() is None:
    # `streamlit run app/main.py` has no gate in front of it: it would serve anyone who reaches the port.
    st.error("Start the dashboard with `marginlens app` (it sets up sign-in); this server serves nothing.")
    st.stop()
who = access.sign_in()
navigation = st.navigation([page(name) for name in (PAGES if who.may_write else VIEWER_PAGES)])
st.sidebar.caption(f"Workspace: `{workspace().root}`  \nSigned in: {who.name}")
access.sign_out_link()
navigation.run()
