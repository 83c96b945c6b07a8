"""Cached reads of workspace data. Keys include the dataset fingerprint, so a re-import invalidates them."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from marginlens.core.data.pairs import load_texts, prompt_text
from marginlens.core.integrity import DamagedFile
from marginlens.core.scoring.score_tables import score_manifest
from marginlens.core.selection.compare import CompareReport, compare_metrics
from marginlens.core.selection.margins import has_dataset_scores, load_margins
from marginlens.core.selection.metrics import MetricParams
from marginlens.core.workspace import Workspace

PREVIEW_CHARS = 200


def manifest(ws: Workspace, name: str) -> dict[str, Any]:
    return ws.dataset_manifest(name)


def dataset_rows(ws: Workspace, names: list[str]) -> pd.DataFrame:
    """The Data page's list of datasets: a damaged one is listed as damaged, with its file and the repair
    command, and the others still list (a cheap check: the manifest, and that its pairs.arrow is there)."""
    rows = []
    for name in names:
        try:
            m = ws.dataset_manifest(name)
            ws.pairs_path(name)
        except DamagedFile as exc:
            rows.append({"name": name, "pairs": None, "rejected": None, "format": "", "scores": "", "source": "",
                         "status": f"damaged: {exc}"})
            continue
        rows.append({"name": name, "pairs": m["rows"]["imported"], "rejected": m["rows"]["rejected"],
                     "format": m["format"], "scores": "yes" if m.get("has_scores") else "no", "source": m["source"],
                     "status": "ok"})
    return pd.DataFrame(rows)


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


@st.cache_data(max_entries=32, show_spinner=False)
def has_scores(root: str, name: str, fingerprint: str) -> bool:
    """Whether the dataset carries explicit scores of its own (read once per dataset version)."""
    return has_dataset_scores(Workspace(root), name)


@st.cache_data(max_entries=8, show_spinner=False)
def rejects(root: str, name: str, fingerprint: str) -> pd.DataFrame:
    path = Workspace(root).rejects_path(name)
    if not path.exists():
        return pd.DataFrame(columns=["row", "line", "field", "reason", "message"])
    frame = pd.read_json(path, lines=True)
    return frame[["row", "line", "field", "reason", "message"]]


def scorer_stamp(ws: Workspace, dataset: str, fingerprints: tuple[str | None, ...]) -> str:
    """Changes whenever one of the score tables is rewritten (a resumed job finishing, a re-score):
    part of the margin cache key, so a finished table shows up without restarting the server."""
    stamps = []
    for fp in fingerprints:
        manifest = score_manifest(ws, dataset, fp) if fp else None
        stamps.append(f"{fp}:{manifest.get('created')}:{manifest.get('rows')}" if manifest else f"{fp}:-")
    return "|".join(stamps)


@st.cache_resource(max_entries=8, show_spinner="Reading margins ...")
def margins(root: str, dataset: str, fingerprint: str, policy: str | None, reference: str | None,
            reward: str | None, beta: float, stamp: str) -> pd.DataFrame:
    """The margin frame, shared by every session without copying (cache_resource): callers never mutate it.

    `fingerprint` (the dataset's) and `stamp` (the score tables') are only part of the key.
    """
    return load_margins(Workspace(root), dataset, policy_fp=policy, reference_fp=reference, reward_fp=reward,
                        beta=beta)


@st.cache_resource(max_entries=4, show_spinner=False)
def texts(root: str, dataset: str, fingerprint: str):
    """The memory-mapped pair table, for text filters (never copied into session state)."""
    return load_texts(Workspace(root), dataset)


@st.cache_resource(max_entries=16, show_spinner="Comparing metrics ...")
def comparison(root: str, dataset: str, fingerprint: str, policy: str | None, reference: str | None,
               reward: str | None, beta: float, stamp: str, ratio: float, weight: float, signed: bool,
               seed: int, im_axis: str) -> CompareReport:
    """core.selection.compare.compare_metrics over the cached frame; keyed only by what changes its result
    (plain arguments, which Streamlit can hash)."""
    frame = margins(root, dataset, fingerprint, policy, reference, reward, beta, stamp)
    return compare_metrics(frame, ratio=ratio, params=MetricParams(weight, signed, seed), im_axis=im_axis,
                           suspects=25)

