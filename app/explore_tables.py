"""The Explore page's tables, without Streamlit: the sortable pair table, one pair's details for the
viewer (its full texts read on demand), and the metrics' top-k overlap as a matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from marginlens.app.explore_frame import frame_columns
from marginlens.app.explore_view import ExploreView
from marginlens.core.data.pairs import load_texts
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.compare import CompareReport
from marginlens.core.selection.compare import label_contradictions as contradicted_rows
from marginlens.core.selection.margins import pair_texts
from marginlens.core.selection.metrics import PAPER_METRICS
from marginlens.core.workspace import Workspace

TABLE_CHARS = 80  # previews in the table: enough to recognise a pair, never the full text
# Rows sent to the table. Every shown cell is rendered in Python on each rerun (missing values as '—'),
# so 200 rows, not 500, keeps a control change at a million pairs inside 0.3 s; the order is over all pairs.
TABLE_LIMIT = 200
# named as the table shows them ("row" is the pair's row in the imported file, the frame's source_row)
TABLE_SORTS = ("score", "m_ex", "m_im", "abs_m_im", "rank", "row", "chosen_chars", "rejected_chars")


def _sort_key(margins: pd.DataFrame, view: ExploreView, sort_by: str) -> np.ndarray:
    """The one column the table is sorted by, as floats (NaN = missing)."""
    if sort_by == "score":
        return view.scores
    if sort_by in ("m_ex", "m_im"):
        cols = frame_columns(margins)
        return cols.m_ex if sort_by == "m_ex" else cols.m_im
    if sort_by == "abs_m_im":
        return np.abs(frame_columns(margins).m_im)
    if sort_by == "rank":
        key = np.full(len(margins), np.inf)
        key[view.selection.positions] = np.arange(1, view.selection.positions.size + 1)
        return key
    if sort_by == "row":
        return margins["source_row"].to_numpy(np.float64)
    if sort_by in ("chosen_chars", "rejected_chars"):
        return margins[sort_by].to_numpy(np.float64)
    raise MarginLensError(f"cannot sort by {sort_by!r} (expected one of {', '.join(TABLE_SORTS)})")


def first_rows(key: np.ndarray, rows: np.ndarray, ascending: bool, limit: int) -> np.ndarray:
    """The first `limit` of `rows` (ascending positions) sorted by key[rows], missing values last in
    either direction, equal keys in row order: what a stable full sort would give, but only the rows
    that can reach the first `limit` places are sorted (a partition finds them in O(n)).

    Worked example: key [3, nan, 1, 3, 2], all rows, descending, limit 2 -> rows [0, 3] (the two 3s,
    in row order); limit 5 -> [0, 3, 4, 2, 1].
    """
    values = key[rows]
    present = ~np.isnan(values)
    signed = np.where(present, values if ascending else -values, 0.0)
    ok = np.flatnonzero(present)
    if limit < ok.size:
        cut = np.partition(signed[ok], limit - 1)[limit - 1]
        ok = ok[signed[ok] <= cut]  # the whole tie group at the cut, so the stable order decides it
    ok = ok[np.argsort(signed[ok], kind="stable")][:limit]
    missing = np.flatnonzero(~present)[: max(0, limit - ok.size)]
    return rows[np.concatenate([ok, missing])]


def table_frame(
    margins: pd.DataFrame, view: ExploreView, mask: np.ndarray | None, sort_by: str = "score",
    ascending: bool = False, limit: int = TABLE_LIMIT,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Up to `limit` rows (previews only, cut to TABLE_CHARS) of the scored pairs in `mask`, sorted server-side
    so every metric can be sorted over all matching pairs, not only over the rows shipped, and counts of
    {"matching": pairs in `mask`, "scored": those the metric scored (the candidates)}. Pairs without the
    margins the metric needs (the unscored part of a sampled scoring) are not listed: they are no candidates,
    and a list of 30 scored pairs above 2,000 unscored ones reads as 2,030 candidates. Numbers come first
    (rank, score, M_AP's two terms, the margins the frame has), the prompt last; a margin the frame lacks, and
    the quadrant without both, are left out rather than shown as an empty column. Strings are read for the
    picked rows only."""
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(margins))
    listed = rows[view.candidates[rows]]
    picked = first_rows(_sort_key(margins, view, sort_by), listed, ascending, limit)
    ranks = np.zeros(len(margins), dtype=np.int64)
    ranks[view.selection.positions] = np.arange(1, view.selection.positions.size + 1)
    rank = ranks[picked]
    cols = frame_columns(margins)
    frame = pd.DataFrame({
        "rank": pd.Series(rank, dtype="Int64").mask(rank == 0),
        "score": view.scores[picked],
        **{name: values[picked] for name, values in view.terms.items()},
        **({"m_ex": cols.m_ex[picked]} if cols.has_explicit else {}),
        **({"m_im": cols.m_im[picked]} if cols.has_implicit else {}),
        **({"quadrant": view.quadrants[picked]} if cols.both.any() else {}),
        "flags": margins["flags"].iloc[picked].to_numpy(dtype=object),
        "row": margins["source_row"].to_numpy()[picked],
        "prompt": margins["prompt_preview"].iloc[picked].str.slice(0, TABLE_CHARS).to_numpy(dtype=object),
        "pair_id": margins["pair_id"].iloc[picked].to_numpy(dtype=object),
    })
    return frame, {"matching": int(rows.size), "scored": int(listed.size)}


# how each numeric column of the pair table is written: signed where the sign is the point
TABLE_FORMATS = {"score": "{:+.3f}", "m_ex": "{:.3f}", "m_im": "{:+.3f}"}
TERM_FORMAT = "{:+.3f}"


def table_style(frame: pd.DataFrame) -> Any:
    """The pair table for st.dataframe: numbers to three decimals (signed where the sign matters), a missing
    value blank (what the page's placeholder draws in the browser too); the data keeps its dtypes, so it sorts
    as numbers."""
    formats = {c: TABLE_FORMATS.get(c, TERM_FORMAT) for c in frame.columns
               if c in TABLE_FORMATS or c.startswith(("z(", "w·z("))}
    style = frame.style.format(formats, na_rep="")
    return style.format("{:d}", subset=["rank"], na_rep="") if "rank" in frame else style


def pick_reason(view: ExploreView, pos: int) -> dict[str, Any]:
    """Why the pair at frame row `pos` is (not) selected: the score's terms, the cut-off (the k-th score, the
    lowest still selected) and the verdict, in the dashboard's words."""
    spec = view.selection.spec
    score = float(view.scores[pos])
    scored = bool(np.isfinite(score))
    cutoff = view.threshold
    k, n = view.selection.k, view.selection.n_candidates
    terms = {name: float(values[pos]) for name, values in view.terms.items()} if scored else {}
    rank = np.flatnonzero(view.selection.positions == pos)
    if not scored:
        verdict = ("not scored: it lacks a margin the metric needs (the Score page computes it), or a filter "
                   "applied before ranking leaves it out")
    elif rank.size:
        verdict = f"selected, rank {int(rank[0]) + 1:,} of {k:,}: its score is at or above the cut-off"
    elif cutoff is None:
        verdict = "not selected: k is 0 at this ratio"
    elif score < cutoff:
        verdict = f"not selected: its score is {cutoff - score:.3f} below the cut-off"
    elif score == cutoff:
        verdict = "not selected: it ties the cut-off, and ties go to the later row (the reference's stable order)"
    else:
        verdict = ("not selected although above the cut-off: a filter applied after ranking removes it, or the "
                   f"{spec.metric!r} rule does not let it into the top-k")
    return {"metric": spec.metric, "score": score if scored else None, "terms": terms, "weight": float(spec.weight),
            "cutoff": cutoff, "k": k, "candidates": n, "ratio": spec.ratio, "selected": bool(rank.size),
            "seed": int(spec.seed), "verdict": verdict}


def label_contradictions(margins: pd.DataFrame, top: int = 50) -> tuple[pd.DataFrame, dict[str, int]]:
    """core.selection.compare.label_contradictions (the list `marginlens compare` prints too) as the table
    Explore shows, with its counts {"n", "both"}."""
    rows, counts = contradicted_rows(margins, top=top)
    frame = pd.DataFrame({
        "pair_id": [r["pair_id"] for r in rows],
        "row": np.array([r["source_row"] for r in rows], dtype=np.int64),
        "m_ex": np.array([r["m_ex"] for r in rows], dtype=np.float64),
        "m_im": np.array([np.nan if r["m_im"] is None else r["m_im"] for r in rows], dtype=np.float64),
        "prompt": [r["prompt_preview"][:TABLE_CHARS] for r in rows],
    })
    return frame, counts


def pair_details(ws: Workspace, dataset: str, margins: pd.DataFrame, view: ExploreView, pair_id: str,
                 texts: Any = None) -> dict[str, Any]:
    """Numbers from the frame plus the full texts of one pair, read on demand from the pair table
    (`texts`, the memory-mapped table when the caller holds it open, else opened here)."""
    where = np.flatnonzero((margins["pair_id"] == pair_id).to_numpy(dtype=bool))
    if where.size == 0:
        raise MarginLensError(f"pair {pair_id!r} is not in dataset {dataset!r}")
    pos = int(where[0])
    row = margins.iloc[pos]
    # the frame's "row" is the pair's place in the pair table: a zero-copy slice of one row, no search over
    # every id (and no take, which would first concatenate the memory-mapped table's chunks)
    table = load_texts(ws, dataset) if texts is None else texts
    found = table.slice(int(row["row"]), 1).to_pylist() if "row" in margins else []
    if not found or found[0]["pair_id"] != pair_id:  # re-imported since the frame was read: look it up
        found = pair_texts(ws, dataset, [pair_id])
    if not found:
        raise MarginLensError(f"pair {pair_id!r} has no row in the pair table of {dataset!r}")
    rank = np.flatnonzero(view.selection.positions == pos)

    def num(name: str) -> float | None:
        value = row.get(name)
        return float(value) if value is not None and pd.notna(value) else None

    return {
        "pair_id": pair_id,
        "source_row": int(row["source_row"]),
        "prompt": found[0]["prompt"],
        "chosen": found[0]["chosen"],
        "rejected": found[0]["rejected"],
        "flags": list(found[0]["flags"] or []),
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
        "why": pick_reason(view, pos),
    }


def compared_by_default(report: CompareReport) -> list[str]:
    """The metrics the overlap matrix and correlations show until the user picks: the paper's four (those that
    ran), else every one compared. Twelve registered rules make a matrix no page column holds."""
    paper = [name for name in PAPER_METRICS if name in report.selected]
    return paper if len(paper) >= 2 else list(report.selected)


def correlation_rows(report: CompareReport, metrics: list[str]) -> list[dict[str, Any]]:
    """compare_metrics' rank-correlation rows between two of `metrics` only."""
    keep = set(metrics)
    return [row for row in report.correlations if row["metric_a"] in keep and row["metric_b"] in keep]


def overlap_matrix(report: CompareReport, metrics: list[str] | None = None) -> pd.DataFrame:
    """compare_metrics' pairwise overlap rows as a square matrix of intersection sizes (diagonal = k), over
    `metrics` (default: every one compared), in the report's order."""
    metrics = [m for m in report.selected if metrics is None or m in metrics]
    matrix = pd.DataFrame(0, index=metrics, columns=metrics, dtype=np.int64)
    for m in metrics:
        matrix.loc[m, m] = len(report.selected[m])
    for row in report.overlap:
        if row["metric_a"] not in matrix.index or row["metric_b"] not in matrix.index:
            continue
        matrix.loc[row["metric_a"], row["metric_b"]] = row["intersection"]
        matrix.loc[row["metric_b"], row["metric_a"]] = row["intersection"]
    return matrix
