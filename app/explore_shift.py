"""Implicit margins before and after (e.g. re-scored with the trained model), without Streamlit: the
counts and the before-vs-after scatter of the Explore page's "Before / after" tab."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from marginlens.app.explore_figures import draw_sample
from marginlens.app.explore_view import DEFAULT_MAX_POINTS
from marginlens.core.errors import MarginLensError


@dataclass
class MarginShift:
    """m_im of the same pairs under two policy tables, for the pairs in a mask that have both."""

    pair_ids: np.ndarray
    before: np.ndarray
    after: np.ndarray
    counts: dict[str, Any]


def margin_shift(before: pd.DataFrame, after: pd.DataFrame, mask: np.ndarray | None = None) -> MarginShift:
    """Compare m_im of two margin frames of one dataset (core.selection.margins.load_margins, pair-table order).

    Counts: pairs compared, pairs missing a margin in either frame, sign flips both ways (the policy
    now prefers the other response), how many margins grew, and the mean / median change.
    """
    ids = before["pair_id"].to_numpy()
    if len(after) != len(before) or not np.array_equal(after["pair_id"].to_numpy(), ids):
        # both come from the same pair table, so this only happens after a re-import between the reads
        raise MarginLensError("the two score tables do not cover the same pairs: reload the page")
    keep = np.ones(len(before), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    m0 = before["m_im"].to_numpy(np.float64, na_value=np.nan)
    m1 = after["m_im"].to_numpy(np.float64, na_value=np.nan)
    both = keep & np.isfinite(m0) & np.isfinite(m1)
    b, a = m0[both], m1[both]
    change = a - b
    counts = {
        "pairs": int(both.sum()),
        "missing": int((keep & ~both).sum()),
        "to_chosen": int(((b < 0) & (a > 0)).sum()),  # preferred rejected before, chosen after
        "to_rejected": int(((b > 0) & (a < 0)).sum()),
        "grew": int((change > 0).sum()),
        "mean_change": float(change.mean()) if change.size else None,
        "median_change": float(np.median(change)) if change.size else None,
    }
    return MarginShift(ids[both], b, a, counts)


def shift_figure(shift: MarginShift, max_points: int = DEFAULT_MAX_POINTS) -> dict[str, Any]:
    """m_im before (x) vs after (y), a fixed sample above max_points; points above y = x moved towards chosen."""
    n = shift.before.size
    pos = draw_sample(np.ones(n, dtype=bool), max_points) if n else np.zeros(0, dtype=np.int64)
    b, a = shift.before[pos], shift.after[pos]
    flipped = ((b < 0) & (a > 0)) | ((b > 0) & (a < 0))  # as counted in margin_shift
    traces = []
    for name, sub, color in (("same sign", ~flipped, "#1565c0"), ("sign flipped", flipped, "#d81b60")):
        traces.append({"type": "scattergl", "mode": "markers", "name": name, "x": b[sub], "y": a[sub],
                       "customdata": shift.pair_ids[pos][sub], "marker": {"size": 5, "color": color, "opacity": 0.7},
                       "hovertemplate": "%{customdata}<br>before %{x:.3f} · after %{y:.3f}<extra></extra>"})
    lo = float(min(b.min(), a.min())) if n else -1.0
    hi = float(max(b.max(), a.max())) if n else 1.0
    line = {"dash": "dash", "color": "#555555", "width": 1}
    layout = {
        "xaxis": {"title": {"text": "m_im before"}}, "yaxis": {"title": {"text": "m_im after"}},
        "height": 420, "margin": {"l": 10, "r": 10, "t": 30, "b": 10}, "legend": {"orientation": "h", "y": 1.08},
        "shapes": [{"type": "line", "x0": lo, "y0": lo, "x1": hi, "y1": hi, "line": line},
                   {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 0, "y1": 0, "line": line},
                   {"type": "line", "yref": "paper", "y0": 0, "y1": 1, "x0": 0, "x1": 0, "line": line}],
    }
    return {"data": traces, "layout": layout}
