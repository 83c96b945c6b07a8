"""Session-state keys shared by Explore and Export: scorers, controls, brush and the open pair.

Streamlit drops a widget's state when its page is left, so the pages copy widget values into
these plain keys; Export then sees exactly the selection the user built on Explore.
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from marginlens.app import readers
from marginlens.app.explore_view import ExploreControls
from marginlens.core.selection.compare import CompareReport
from marginlens.core.selection.margins import DEFAULT_BETA, default_scorers
from marginlens.core.workspace import Workspace

CONTROLS = "explore_controls"
SCORERS = "explore_scorers"
BRUSH = "explore_brush"
PAIR = "explore_pair"


def controls() -> ExploreControls:
    return ExploreControls.from_dict(st.session_state.get(CONTROLS))


def set_controls(value: ExploreControls) -> None:
    st.session_state[CONTROLS] = value.to_dict()


def scorers(ws: Workspace, dataset: str) -> dict[str, Any]:
    """The score tables the user picked for `dataset`, else core's defaults (newest tables)."""
    picked = st.session_state.get(SCORERS, {})
    if picked.get("dataset") != dataset or picked.get("policy") is None:
        # also when no policy table existed before: one that a scoring job just wrote is picked up
        defaults = default_scorers(ws, dataset)
        if picked.get("dataset") != dataset:
            picked = {"dataset": dataset, "policy": defaults["policy"], "reference": None,
                      "reward": defaults["reward"], "beta": DEFAULT_BETA}
        else:
            picked = {**picked, "policy": defaults["policy"]}
        st.session_state[SCORERS] = picked
    return picked


def set_scorers(value: dict[str, Any]) -> None:
    st.session_state[SCORERS] = value


def brush(dataset: str) -> dict[str, Any] | None:
    value = st.session_state.get(BRUSH)
    return value["brush"] if value and value.get("dataset") == dataset else None


def set_brush(dataset: str, value: dict[str, Any] | None) -> None:
    st.session_state[BRUSH] = {"dataset": dataset, "brush": value} if value else None


def open_pair(dataset: str) -> str | None:
    value = st.session_state.get(PAIR)
    return value["pair_id"] if value and value.get("dataset") == dataset else None


def set_open_pair(dataset: str, pair_id: str | None) -> None:
    st.session_state[PAIR] = {"dataset": dataset, "pair_id": pair_id} if pair_id else None


def margins_for(ws: Workspace, dataset: str, picked: dict[str, Any]):
    """The cached margin frame for the picked scorers (raises MarginLensError for a missing table)."""
    fps = (picked.get("policy"), picked.get("reference"), picked.get("reward"))
    manifest = ws.dataset_manifest(dataset)
    return readers.margins(str(ws.root), dataset, manifest["fingerprint"], *fps, float(picked.get("beta") or DEFAULT_BETA),
                           readers.scorer_stamp(ws, dataset, fps))


def comparison_for(ws: Workspace, dataset: str, picked: dict[str, Any], c: ExploreControls) -> CompareReport:
    fps = (picked.get("policy"), picked.get("reference"), picked.get("reward"))
    manifest = ws.dataset_manifest(dataset)
    return readers.comparison(str(ws.root), dataset, manifest["fingerprint"], *fps,
                              float(picked.get("beta") or DEFAULT_BETA), readers.scorer_stamp(ws, dataset, fps),
                              float(c.ratio), float(c.weight), bool(c.signed), int(c.seed), c.im_axis)


def texts_for(ws: Workspace, dataset: str):
    return readers.texts(str(ws.root), dataset, ws.dataset_manifest(dataset)["fingerprint"])

