"""The dashboard's pages, in one list: the entry script navigates over it and pages link through it.

A page that sends the user to another page with a setting chosen (the start page's checklist) does it with
`go`: the setting waits in session state until the target page takes it with `arrival`, once, before it
draws its widgets, so the page opens with that setting and the user's later changes are not overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"

# url path -> (title, icon); the file is pages/<url path>_page.py
PAGES: dict[str, tuple[str, str]] = {
    "start": ("Start", ":material/flag:"),
    "data": ("Data", ":material/database:"),
    "score": ("Score", ":material/speed:"),
    "explore": ("Explore", ":material/scatter_plot:"),
    "audit": ("Audit", ":material/gavel:"),
    "export": ("Export", ":material/download:"),
    "train": ("Train", ":material/model_training:"),
    "experiments": ("Experiments", ":material/science:"),
    "selfplay": ("Self-play", ":material/autorenew:"),
}
DEFAULT_PAGE = "start"  # served at the root URL
# What a viewer (read-only sign-in) is shown: the start page's checklist, browsing, audit results and downloads.
VIEWER_PAGES = ("start", "data", "explore", "audit", "export")
_ARRIVAL = "_nav_arrival"  # page name -> the settings `go` asked it to open with


def page(name: str) -> st.Page:
    title, icon = PAGES[name]
    default = name == DEFAULT_PAGE
    return st.Page(PAGES_DIR / f"{name}_page.py", title=title, icon=icon, default=default,
                   url_path=None if default else name)


def go(name: str, dataset: str | None = None, **settings: Any) -> None:
    """Open page `name` (it must be in the user's navigation) with `settings` for it to take on arrival;
    the URL names the dataset, as the pages' pickers do."""
    waiting = {page_name: v for page_name, v in st.session_state.get(_ARRIVAL, {}).items() if page_name != name}
    if settings:  # nothing left waiting for a page opened without settings (or one that never reads them)
        waiting[name] = settings
    st.session_state[_ARRIVAL] = waiting
    st.switch_page(page(name), query_params={"dataset": dataset} if dataset else None)


def arrival(name: str) -> dict[str, Any]:
    """The settings another page sent page `name` with `go` ({} when none); taken once."""
    waiting = st.session_state.get(_ARRIVAL, {})
    settings = waiting.pop(name, None) or {}
    st.session_state[_ARRIVAL] = waiting
    return settings
