"""Session-state accessors: one place that knows the keys."""

from __future__ import annotations

import streamlit as st
from marginlens.core.integrity import DamagedFile
from marginlens.core.workspace import Workspace


def workspace() -> Workspace:
    """The workspace of this server: $MARGINLENS_WORKSPACE (set by `marginlens app`) or the default."""
    if "workspace" not in st.session_state:
        st.session_state["workspace"] = Workspace.resolve(None)
    return st.session_state["workspace"]


def current_dataset(names: list[str]) -> str | None:
    """The dataset the user is working on, kept across pages; in a new session (a reload, a bookmark, a
    shared link) the one the URL's ?dataset= names; else the first."""
    name = st.session_state.get("dataset")
    if name not in names:
        name = st.query_params.get("dataset")
    if name not in names:
        name = names[0] if names else None
        st.session_state["dataset"] = name
    return name


def select_dataset(name: str) -> None:
    """Make `name` the dataset every page works on, the picker included (a keyed widget keeps its own value)."""
    st.session_state["dataset"] = name
    st.session_state["_dataset_picker"] = name
    st.query_params["dataset"] = name


def dataset_picker(names: list[str], label: str = "Dataset") -> str | None:
    if not names:
        return None
    current = current_dataset(names)
    chosen = st.selectbox(label, names, index=names.index(current), key="_dataset_picker")
    st.session_state["dataset"] = chosen
    st.query_params["dataset"] = chosen  # the URL names the dataset: a reload or a shared link keeps it
    return chosen


def page_with_dataset(title: str, sidebar_picker: bool = False) -> tuple[Workspace, str]:
    """Title the page and pick the dataset to work on; stop the page with a hint when there is none."""
    ws = workspace()
    st.title(title)
    names = ws.dataset_names()
    if not names:
        st.info("No datasets yet: import one on the Data page.")
        st.stop()
    if sidebar_picker:
        with st.sidebar:
            name = dataset_picker(names)
    else:
        name = dataset_picker(names)
    stop_if_damaged(ws, name, tables=True)
    return ws, name


def stop_if_damaged(ws: Workspace, name: str, tables: bool = False) -> None:
    """Stop the page with the error of a damaged dataset -- the file, what is wrong, the repair command --
    rather than a traceback further down; the picker above it stays, so another dataset can be chosen.
    `tables`: the dataset's score table manifests too (the pages that pick tables list them all)."""
    from marginlens.core.scoring.score_tables import list_score_tables

    try:
        ws.pairs_path(name)  # the manifest, and the file it points at
        if tables:
            list_score_tables(ws, name)
    except DamagedFile as exc:
        from marginlens.app.widgets import show_error

        show_error(exc)
        st.stop()
