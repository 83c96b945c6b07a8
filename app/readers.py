"""Cached reads of workspace data. Keys include the dataset fingerprint, so a re-import invalidates them."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core.pairs import prompt_text
from core.workspace import Workspace

PREVIEW_CHARS = 200


def manifest(ws: Workspace, name: str) -> dict[str, Any]:
    return ws.dataset_manifest(name)


@st.cache_data(max_entries=32, show_spinner=False)
def preview(root: str, name: str, fingerprint: str, offset: int = 0, limit: int = 50) -> pd.DataFrame:
    """A page of pairs with texts cut short: full texts stay on disk until a pair is opened."""
    rows = Workspace(root).load_pairs(name).select(range(offset, min(offset + limit, _rows(root, name, fingerprint))))
    return pd.DataFrame(
        {
            "row": rows["source_row"],
            "prompt": [prompt_text(p)[:PREVIEW_CHARS] for p in rows["prompt"]],
            "chosen": [t[:PREVIEW_CHARS] for t in rows["chosen"]],
            "rejected": [t[:PREVIEW_CHARS] for t in rows["rejected"]],
            "score_chosen": rows["score_chosen"],
            "score_rejected": rows["score_rejected"],
            "flags": [", ".join(f) for f in rows["flags"]],
            "pair_id": rows["pair_id"],
        }
    )


@st.cache_data(max_entries=32, show_spinner=False)
def _rows(root: str, name: str, fingerprint: str) -> int:
    return Workspace(root).load_pairs(name).num_rows


@st.cache_data(max_entries=8, show_spinner=False)
def rejects(root: str, name: str, fingerprint: str) -> pd.DataFrame:
    path = Workspace(root).rejects_path(name)
    if not path.exists():
        return pd.DataFrame(columns=["row", "line", "field", "reason", "message"])
    frame = pd.read_json(path, lines=True)
    return frame[["row", "line", "field", "reason", "message"]]
