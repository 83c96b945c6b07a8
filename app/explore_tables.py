"""The Explore page's tables, without Streamlit: the sortable pair table, one pair's details for the
viewer (its full texts read on demand), and the metrics' top-k overlap as a matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from marginlens.app.explore_view import ExploreView
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.compare import CompareReport
from marginlens.core.selection.margins import pair_texts
from marginlens.core.workspace import Workspace

TABLE_CHARS = 80  # previews in the table: enough to recognise a pair, never the full text
TABLE_LIMIT = 500
TABLE_SORTS = ("score", "m_ex", "m_im", "abs_m_im", "rank", "source_row", "chosen_chars", "rejected_chars")


def table_frame(
    margins: pd.DataFrame, view: ExploreView, mask: np.ndarray | None, sort_by: str = "score",
    ascending: bool = False, limit: int = TABLE_LIMIT,
) -> tuple[pd.DataFrame, int]:
    """Up to `limit` rows (previews only, cut to TABLE_CHARS) of the pairs in `mask`, sorted server-side
    so every metric can be sorted over all matching pairs, not only over the rows shipped."""
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(margins))
    rank = np.zeros(len(margins), dtype=np.int64)
    rank[view.selection.positions] = np.arange(1, view.selection.positions.size + 1)
    keys = {
        "score": view.scores, "m_ex": margins["m_ex"].to_numpy(np.float64, na_value=np.nan),
        "m_im": margins["m_im"].to_numpy(np.float64, na_value=np.nan),
        "abs_m_im": np.abs(margins["m_im"].to_numpy(np.float64, na_value=np.nan)),
        "rank": np.where(rank > 0, rank, np.iinfo(np.int64).max).astype(np.float64),
        "source_row": margins["source_row"].to_numpy(np.float64),
        "chosen_chars": margins["chosen_chars"].to_numpy(np.float64),
        "rejected_chars": margins["rejected_chars"].to_numpy(np.float64),
    }
    if sort_by not in keys:
        raise MarginLensError(f"cannot sort by {sort_by!r} (expected one of {', '.join(TABLE_SORTS)})")
    key = keys[sort_by][rows]
    # missing values last in either direction; stable so equal keys keep source order
    order = np.lexsort((np.where(np.isnan(key), 0, key if ascending else -key), np.isnan(key)))
    picked = rows[order[:limit]]
    frame = pd.DataFrame({
        "pair_id": margins["pair_id"].to_numpy()[picked],
        "row": margins["source_row"].to_numpy()[picked],
        "prompt": margins["prompt_preview"].str.slice(0, TABLE_CHARS).to_numpy()[picked],
        "selected": view.selected[picked],
        "rank": pd.Series(rank[picked], dtype="Int64").mask(rank[picked] == 0),
        "score": view.scores[picked],
        "m_ex": keys["m_ex"][picked],
        "m_im": keys["m_im"][picked],
        "quadrant": view.quadrants[picked],
        "flags": margins["flags"].to_numpy()[picked],
    })
    return frame, int(rows.size)


def pair_details(ws: Workspace, dataset: str, margins: pd.DataFrame, view: ExploreView, pair_id: str) -> dict[str, Any]:
    """Numbers from the frame plus the full texts of one pair, read on demand from the pair table."""
    where = np.flatnonzero(margins["pair_id"].to_numpy() == pair_id)
    if where.size == 0:
        raise MarginLensError(f"pair {pair_id!r} is not in dataset {dataset!r}")
    pos = int(where[0])
    row = margins.iloc[pos]
    texts = pair_texts(ws, dataset, [pair_id])
    if not texts:
        raise MarginLensError(f"pair {pair_id!r} has no row in the pair table of {dataset!r}")
    rank = np.flatnonzero(view.selection.positions == pos)

    def num(name: str) -> float | None:
        value = row.get(name)
        return float(value) if value is not None and pd.notna(value) else None

    return {
        "pair_id": pair_id,
        "source_row": int(row["source_row"]),
        "prompt": texts[0]["prompt"],
        "chosen": texts[0]["chosen"],
        "rejected": texts[0]["rejected"],
        "flags": list(texts[0]["flags"] or []),
        "numbers": {
            "chosen": {"logp": num("chosen_logp"), "tokens": num("chosen_ntok"), "reward": num("chosen_reward"),
                       "score": num("score_chosen")},
            "rejected": {"logp": num("rejected_logp"), "tokens": num("rejected_ntok"),
                         "reward": num("rejected_reward"), "score": num("score_rejected")},
        },
        "m_ex": num("m_ex"),
        "m_im": num("m_im"),
        "score": float(view.scores[pos]) if np.isfinite(view.scores[pos]) else None,
        "selected": bool(view.selected[pos]),
        "rank": int(rank[0]) + 1 if rank.size else None,
        "quadrant": str(view.quadrants[pos]) or None,
        "truncated": bool(row.get("truncated", False)),
    }


def overlap_matrix(report: CompareReport) -> pd.DataFrame:
    """compare_metrics' pairwise overlap rows as a square matrix of intersection sizes (diagonal = k)."""
    metrics = list(report.selected)
    matrix = pd.DataFrame(0, index=metrics, columns=metrics, dtype=np.int64)
    for m in metrics:
        matrix.loc[m, m] = len(report.selected[m])
    for row in report.overlap:
        matrix.loc[row["metric_a"], row["metric_b"]] = row["intersection"]
        matrix.loc[row["metric_b"], row["metric_a"]] = row["intersection"]
    return matrix
