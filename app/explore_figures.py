"""The Explore page's figures, without Streamlit: the m_ex vs m_im scatter and the margin/score histograms."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from marginlens.app.explore_view import ExploreControls, ExploreView

HOVER_CHARS = 60
QUADRANT_COLORS = {
    "high_potential": "#2e7d32",
    "already_learned": "#1565c0",
    "ambiguous": "#9e9e9e",
    "model_confident": "#ef6c00",
    "": "#cccccc",
}


def hover_texts(previews: pd.Series) -> np.ndarray:
    """First line of each prompt preview, cut to HOVER_CHARS and HTML-escaped: plotly renders a subset
    of HTML (<a>, <b>, <br>) inside labels, and these texts are untrusted. Vectorised; cache it per dataset."""
    first = previews.fillna("").str.split("\n", n=1).str[0].str.slice(0, HOVER_CHARS)
    escaped = first.str.replace("&", "&amp;", regex=False).str.replace("<", "&lt;", regex=False)
    return escaped.str.replace(">", "&gt;", regex=False).to_numpy(dtype=object)


def draw_sample(plottable: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Positions to draw: all of them under max_points, else a fixed random sample (stable across reruns,
    so points do not jump when a control changes)."""
    pos = np.flatnonzero(plottable)
    if pos.size <= max_points:
        return pos
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pos, size=max_points, replace=False))


def scatter_figure(
    margins: pd.DataFrame, view: ExploreView, controls: ExploreControls, inside: np.ndarray | None = None,
    hover: np.ndarray | None = None,
) -> tuple[dict[str, Any], int]:
    """WebGL scatter of m_ex (x) vs m_im (y) as a plotly figure dict; returns it and how many points it draws.

    Every point carries [pair_id, prompt preview] as customdata, so a box/lasso selection maps back to
    pairs whatever trace a point is in. A dict, not a go.Figure: st.plotly_chart validates (deep-copies)
    the figure itself, and doing that twice for tens of thousands of points is most of a rerun.
    """
    m_ex = margins["m_ex"].to_numpy(np.float64, na_value=np.nan)
    m_im = margins["m_im"].to_numpy(np.float64, na_value=np.nan)
    plottable = np.isfinite(m_ex) & np.isfinite(m_im)
    pos = draw_sample(plottable, controls.max_points)
    pair_id = margins["pair_id"].to_numpy()
    if hover is None:
        hover = np.empty(len(margins), dtype=object)
        hover[pos] = hover_texts(margins["prompt_preview"].iloc[pos])
    template = ("%{customdata[1]}<br>m_ex %{x:.3f} · m_im %{y:.3f}"
                + ("<br>score %{marker.color:.3f}" if controls.color_by == "score" else "")
                + "<extra>%{fullData.name}</extra>")
    traces: list[dict[str, Any]] = []

    def trace(sub: np.ndarray, name: str, **marker: Any) -> None:
        custom = np.column_stack([pair_id[sub], hover[sub]]) if sub.size else np.empty((0, 2), dtype=object)
        traces.append({"type": "scattergl", "mode": "markers", "name": name, "x": m_ex[sub], "y": m_im[sub],
                       "customdata": custom, "hovertemplate": template, "marker": {"size": 5, **marker}})

    if controls.color_by == "score":
        floor = float(np.nanmin(view.scores)) if view.candidates.any() else 0.0
        trace(pos, f"{controls.metric} score", color=np.nan_to_num(view.scores[pos], nan=floor),
              colorscale="Viridis", opacity=0.7, colorbar={"title": {"text": controls.metric}, "thickness": 12})
    elif controls.color_by == "quadrant":
        for name, color in QUADRANT_COLORS.items():
            sub = pos[view.quadrants[pos] == name]
            if name and sub.size:
                trace(sub, name.replace("_", " "), color=color, opacity=0.7)
    else:
        member = view.selected[pos]
        trace(pos[~member], "not selected", color="#b0b0b0", opacity=0.5)
        trace(pos[member], f"selected (top {view.selection.k})", color="#d81b60", opacity=0.8)
    if inside is not None:
        # the brushed points on top, ringed, so the selection stays visible after the rerun
        trace(pos[inside[pos]], "in scatter selection", color="rgba(0,0,0,0)", size=7,
              line={"color": "#000000", "width": 1})
    layout = {
        "xaxis": {"title": {"text": "explicit margin m_ex"}},
        "yaxis": {"title": {"text": "implicit margin m_im (signed)"}},
        "dragmode": "select", "height": 520, "margin": {"l": 10, "r": 10, "t": 30, "b": 10},
        "legend": {"orientation": "h", "y": 1.08}, "uirevision": "explore",
        "shapes": quadrant_shapes(view, controls.im_axis),
    }
    return {"data": traces, "layout": layout}, int(pos.size)


def quadrant_shapes(view: ExploreView, im_axis: str) -> list[dict[str, Any]]:
    """Dashed quadrant lines; with the |m_im| split that is a band between -s and +s on the signed axis."""
    if view.ex_split is None:
        return []
    line = {"dash": "dash", "color": "#555555", "width": 1}
    shapes = [{"type": "line", "xref": "x", "yref": "paper", "x0": view.ex_split, "x1": view.ex_split,
               "y0": 0, "y1": 1, "line": line}]
    for y in ([view.im_split, -view.im_split] if im_axis == "abs" else [view.im_split]):
        shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": y, "y1": y, "line": line})
    return shapes


def histogram_figure(values: np.ndarray, selected: np.ndarray, title: str, marks: dict[str, float]) -> go.Figure:
    """Binned server-side (numpy), so 100k values travel as ~60 bars, not as raw data."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    fig = go.Figure()
    if ok.any():
        edges = np.histogram_bin_edges(values[ok], bins=60)
        centers = (edges[:-1] + edges[1:]) / 2
        width = float(edges[1] - edges[0]) if edges.size > 1 else 1.0
        all_counts, _ = np.histogram(values[ok], bins=edges)
        sel_counts, _ = np.histogram(values[ok & selected], bins=edges)
        fig.add_bar(x=centers, y=all_counts, width=width, name="all", marker_color="#b0b0b0")
        fig.add_bar(x=centers, y=sel_counts, width=width, name="selected", marker_color="#d81b60")
        for label, x in marks.items():
            if x is not None and np.isfinite(x):
                fig.add_vline(x=x, line_dash="dash", line_color="#000000", annotation_text=label,
                              annotation_position="top")
    fig.update_layout(title=title, barmode="overlay", height=260, showlegend=False,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def histogram_marks(margins: pd.DataFrame, view: ExploreView, controls: ExploreControls) -> dict[str, dict[str, float]]:
    """Where the selection threshold and the quadrant splits fall on each histogram's axis."""
    marks: dict[str, dict[str, float]] = {"m_ex": {}, "m_im": {}, "score": {}}
    if view.threshold is not None:
        marks["score"]["threshold"] = view.threshold
    if view.ex_split is not None:
        marks["m_ex"]["split"] = view.ex_split
        if controls.im_axis == "signed":
            marks["m_im"]["split"] = view.im_split
        else:
            marks["m_im"]["+split"], marks["m_im"]["-split"] = view.im_split, -view.im_split
    if controls.metric == "explicit" and view.threshold is not None:
        # the explicit score is z(m_ex) over the candidates: map the threshold back to m_ex units
        m_ex = margins["m_ex"].to_numpy(np.float64, na_value=np.nan)[view.candidates]
        if m_ex.size and m_ex.std() > 0:
            marks["m_ex"]["threshold"] = float(m_ex.mean() + view.threshold * m_ex.std())
    return marks
