"""The dashboard's pages, in one list: the entry script navigates over it and pages link through it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"

# url path -> (title, icon); the file is pages/<url path>_page.py
PAGES: dict[str, tuple[str, str]] = {
    "data": ("Data", ":material/database:"),
    "score": ("Score", ":material/speed:"),
    "explore": ("Explore", ":material/scatter_plot:"),
    "audit": ("Audit", ":material/gavel:"),
    "export": ("Export", ":material/download:"),
    "train": ("Train", ":material/model_training:"),
    "experiments": ("Experiments", ":material/science:"),
    "selfplay": ("Self-play", ":material/autorenew:"),
}
# What a viewer (read-only sign-in) is shown: browsing, audit results and downloads.
VIEWER_PAGES = ("data", "explore", "audit", "export")


def page(name: str) -> st.Page:
    title, icon = PAGES[name]
    default = name == "data"  # the default page lives at the root URL
    return st.Page(PAGES_DIR / f"{name}_page.py", title=title, icon=icon, default=default,
                   url_path=None if default else name)
