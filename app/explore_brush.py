"""The box / lasso selection ("brush") on the Explore scatter: read from Streamlit's event, applied to
every pair of the margin frame, and cut into a selection for Export. Without Streamlit, like explore_view."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
from marginlens.core.selection.select import Selection


def brush_from_event(selection: Any) -> dict[str, Any] | None:
    """Normalise Streamlit's plotly selection state into {"kind", "x", "y", "pair_ids"}, or None.

    Geometry is kept so the brush applies to every pair, also those not drawn (the scatter draws a
    sample above max_points); the points' customdata (pair ids) is the fallback without geometry.
    """
    if not selection:
        return None
    get = selection.get if hasattr(selection, "get") else lambda k, d=None: getattr(selection, k, d)
    boxes, lassos, points = get("box", []) or [], get("lasso", []) or [], get("points", []) or []
    pair_ids = [p["customdata"][0] for p in points if isinstance(p.get("customdata"), (list, tuple))]
    if boxes:
        box = boxes[-1]
        return {"kind": "box", "x": [float(min(box["x"])), float(max(box["x"]))],
                "y": [float(min(box["y"])), float(max(box["y"]))], "pair_ids": pair_ids}
    if lassos:
        lasso = lassos[-1]
        return {"kind": "lasso", "x": [float(v) for v in lasso["x"]], "y": [float(v) for v in lasso["y"]],
                "pair_ids": pair_ids}
    if pair_ids:
        return {"kind": "points", "x": [], "y": [], "pair_ids": pair_ids}
    return None


def brush_key(brush: dict[str, Any] | None) -> tuple | None:
    """What identifies a brush: its geometry; the picked ids only for a brush without geometry (the
    chart re-reports the same box with whatever points it then holds)."""
    if not brush:
        return None
    if brush["kind"] in ("box", "lasso"):
        return (brush["kind"], tuple(brush["x"]), tuple(brush["y"]))
    return ("points", tuple(sorted(brush.get("pair_ids", []))))


def _in_polygon(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    # even-odd ray casting, vectorised over the points, looping over the polygon's edges
    inside = np.zeros(x.shape, dtype=bool)
    j = len(px) - 1
    for i in range(len(px)):
        xi, yi, xj, yj = px[i], py[i], px[j], py[j]
        crosses = (yi > y) != (yj > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (xj - xi) * (y - yi) / (yj - yi) + xi
        inside ^= crosses & (x < x_at)
        j = i
    return inside


def brush_mask(margins: pd.DataFrame, brush: dict[str, Any] | None) -> np.ndarray | None:
    """Rows of the frame inside the brush (the scatter plots m_ex on x and m_im on y); None = no brush."""
    if not brush:
        return None
    x = margins["m_ex"].to_numpy(np.float64, na_value=np.nan)
    y = margins["m_im"].to_numpy(np.float64, na_value=np.nan)
    if brush["kind"] == "box":
        (x0, x1), (y0, y1) = brush["x"], brush["y"]
        with np.errstate(invalid="ignore"):
            return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    if brush["kind"] == "lasso" and len(brush["x"]) >= 3:
        ok = np.isfinite(x) & np.isfinite(y)
        return ok & _in_polygon(np.nan_to_num(x), np.nan_to_num(y), np.asarray(brush["x"]), np.asarray(brush["y"]))
    return margins["pair_id"].isin(set(brush.get("pair_ids", []))).to_numpy()


def describe_brush(brush: dict[str, Any] | None) -> str:
    if not brush:
        return ""
    if brush["kind"] == "box":
        (x0, x1), (y0, y1) = brush["x"], brush["y"]
        return f"box m_ex in [{x0:.3g}, {x1:.3g}], m_im in [{y0:.3g}, {y1:.3g}]"
    if brush["kind"] == "lasso":
        return f"lasso with {len(brush['x'])} vertices"
    return f"{len(brush.get('pair_ids', []))} picked points"


def restrict_selection(selection: Selection, inside: np.ndarray | None, brush: dict[str, Any] | None) -> Selection:
    """The top-k selection cut down to the brushed pairs; the brush is recorded as a warning, which
    export manifests keep (core.selection.filters has no geometry filter, so this is the provenance)."""
    if inside is None:
        return selection
    keep = selection.positions[inside[selection.positions]]
    ids = set(np.asarray(selection.pair_ids, dtype=object)[inside[selection.positions]].tolist())
    note = f"restricted to the scatter selection ({describe_brush(brush)}): {keep.size:,} of {selection.positions.size:,}"
    return dataclasses.replace(selection, positions=keep, pair_ids=[p for p in selection.pair_ids if p in ids],
                               warnings=[*selection.warnings, note])
