"""The Data page's "Check workspace": core.doctor's check, read-only, with its findings; repairing stays on
the command line (`marginlens doctor --repair`), where moving files aside and re-importing is seen through."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from marginlens.app import widgets
from marginlens.core.workspace import Workspace

_FINDINGS = "_workspace_check_findings"


def workspace_check(ws: Workspace) -> None:
    with st.expander("Check workspace"):
        st.caption("Reads every dataset, score table and job folder whole, as `marginlens doctor` does (slow on "
                   f"large workspaces), and lists what is damaged. To repair: `{ws.doctor_command()}`.")
        if st.button("Check now", key="_workspace_check"):
            from marginlens.core.doctor import check_workspace

            st.session_state[_FINDINGS] = check_workspace(ws)
        report = st.session_state.get(_FINDINGS)
        if report is None or report.root != ws.root:
            return
        st.caption(report.summary())
        if not report.findings:
            st.success("No damaged file found.")
            return
        st.error(f"{len(report.findings)} damaged: `{ws.doctor_command()}` repairs them (damaged files are moved "
                 f"to {ws.root / 'quarantine'}, never deleted).")
        widgets.table(pd.DataFrame([{"what": f.kind, "file": str(f.path), "problem": f.problem, "repair": f.fix}
                                    for f in report.findings]), hide_index=True, width="stretch")
