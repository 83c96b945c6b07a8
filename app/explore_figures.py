"""The Explore page's figures, without Streamlit: the m_ex vs m_im scatter, the margin/score histograms and
the top-k overlap heatmap."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from marginlens.app.explore_frame import frame_columns
from marginlens.app.explore_view import ExploreControls, ExploreView

HOVER_CHARS = 60
QUADRANT_COLORS = {
    "high_potential": "#2e7d32",
    "policy_decided": "#1565c0",
    "ambiguous": "#9e9e9e",
    "model_confident": "#ef6c00",
    "": "#cccccc",
}


def hover_texts(previews: pd.Series) -> np.ndarray:
    """First line of each prompt preview, cut to HOVER_CHARS and HTML-escaped: plotly renders a subset
    of HTML (<a>, <b>, <br>) inside labels, and these texts are untrusted. Vectorised; called for the drawn
    points only (scatter_figure keeps them per frame)."""
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


DENSITY_BINS = (160, 100)  # x, y cells of the density view: ~16k numbers, whatever the number of pairs


def _bin2d(x: np.ndarray, y: np.ndarray, bins: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts over np.histogram2d's equal-width bins (the data's range, last bin closed), by cell arithmetic
    and one bincount: a few times faster than its searchsorted path. A value exactly on an inner edge may
    count in the cell below; for a picture of the density that does not matter."""
    edges = []
    cells = []
    for values, n in ((x, bins[0]), (y, bins[1])):
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5  # histogram2d's range for a constant column
        edge = np.linspace(lo, hi, n + 1)
        cell = np.clip(((values - lo) * (n / (hi - lo))).astype(np.int64), 0, n - 1)
        edges.append(edge)
        cells.append(cell)
    counts = np.bincount(cells[0] * bins[1] + cells[1], minlength=bins[0] * bins[1]).reshape(bins)
    return counts.astype(np.float64), edges[0], edges[1]


def density_trace(x: np.ndarray, y: np.ndarray, bins: tuple[int, int] = DENSITY_BINS) -> dict[str, Any]:
    """Every pair, binned on the server into a heatmap of log10 counts (empty cells transparent): the
    browser draws the whole distribution from a fixed-size grid instead of a million points."""
    counts, x_edges, y_edges = _bin2d(x, y, bins)
    with np.errstate(divide="ignore"):
        z = np.where(counts > 0, np.log10(counts), np.nan).T  # heatmap rows are y
    return {"type": "heatmap", "name": "all pairs (density)", "x": (x_edges[:-1] + x_edges[1:]) / 2,
            "y": (y_edges[:-1] + y_edges[1:]) / 2, "z": z, "colorscale": "Greys", "showscale": False,
            "opacity": 0.6, "hoverinfo": "skip", "zmin": 0.0}


def scatter_figure(
    margins: pd.DataFrame, view: ExploreView, controls: ExploreControls, inside: np.ndarray | None = None,
) -> tuple[dict[str, Any], int]:
    """WebGL scatter of m_ex (x) vs m_im (y) as a plotly figure dict; returns it and how many points it draws.

    Above max_points it draws a density view of every pair plus a fixed sample of points, so the
    message stays small (a box selection round-trips in the browser in well under a second at 1M
    pairs) and the selection geometry still applies to all pairs. Every point carries [pair_id, prompt
    preview] as customdata, so a box/lasso selection maps back to pairs whatever trace a point is in.
    A dict, not a go.Figure: st.plotly_chart validates (deep-copies) the figure itself.
    """
    cols = frame_columns(margins)
    m_ex, m_im = cols.m_ex, cols.m_im
    max_points = int(controls.max_points)
    pos = cols.memo(("sample", max_points), lambda: draw_sample(cols.both, max_points))
    custom = cols.memo(("customdata", max_points), lambda: np.column_stack(
        [margins["pair_id"].iloc[pos].to_numpy(dtype=object), hover_texts(margins["prompt_preview"].iloc[pos])]
    ) if pos.size else np.empty((0, 2), dtype=object))
    template = ("%{customdata[1]}<br>m_ex %{x:.3f} · m_im %{y:.3f}"
                + ("<br>score %{marker.color:.3f}" if controls.color_by == "score" else "")
                + "<extra>%{fullData.name}</extra>")
    traces: list[dict[str, Any]] = []
    if pos.size < cols.both.sum():
        traces.append(cols.memo(("density",), lambda: density_trace(m_ex[cols.both], m_im[cols.both])))

    def trace(sub: np.ndarray, name: str, **marker: Any) -> None:
        # `sub` indexes the drawn sample (pos), so customdata needs no lookup over the whole frame
        traces.append({"type": "scattergl", "mode": "markers", "name": name, "x": m_ex[pos[sub]],
                       "y": m_im[pos[sub]], "customdata": custom[sub], "hovertemplate": template,
                       "marker": {"size": 5, **marker}})

    everything = np.arange(pos.size)
    if controls.color_by == "score":
        floor = float(np.nanmin(view.scores)) if view.candidates.any() else 0.0
        trace(everything, f"{controls.metric} score", color=np.nan_to_num(view.scores[pos], nan=floor),
              colorscale="Viridis", opacity=0.7, colorbar={"title": {"text": controls.metric}, "thickness": 12})
    elif controls.color_by == "quadrant":
        labels = view.quadrants[pos]
        for name, color in QUADRANT_COLORS.items():
            sub = np.flatnonzero(labels == name)
            if name and sub.size:
                trace(sub, name.replace("_", " "), color=color, opacity=0.7)
    else:
        member = view.selected[pos]
        trace(np.flatnonzero(~member), "not selected", color="#b0b0b0", opacity=0.5)
        trace(np.flatnonzero(member), f"selected (top {view.selection.k:,})", color="#d81b60", opacity=0.8)
    if inside is not None:
        # the brushed points on top, ringed, so the selection stays visible after the rerun
        trace(np.flatnonzero(inside[pos]), "in scatter selection", color="rgba(0,0,0,0)", size=7,
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
        fig.add_bar(x=centers, y=all_counts, width=width, name="all pairs", marker_color="#b0b0b0")
        fig.add_bar(x=centers, y=sel_counts, width=width, name="selected (top-k)", marker_color="#d81b60")
        for label, x in marks.items():
            if x is not None and np.isfinite(x):
                fig.add_vline(x=x, line_dash="dash", line_color="#000000", annotation_text=label,
                              annotation_position="top")
    # the legend says which bars are which; dashed lines are labelled where they stand
    fig.update_layout(title=title, barmode="overlay", height=290, showlegend=True,
                      legend={"orientation": "h", "yanchor": "top", "y": -0.15, "x": 0},
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def overlap_figure(matrix: pd.DataFrame) -> go.Figure:
    """The top-k overlap matrix (explore_tables.overlap_matrix) as a heatmap with each count written in its cell.
    No fixed width: it fills its column at any number of metrics, where a table of twelve was cut off."""
    names = [str(n) for n in matrix.columns]
    values = matrix.to_numpy().tolist()  # plain lists: a few dozen cells, readable in the figure's JSON
    fig = go.Figure(go.Heatmap(z=values, x=names, y=names, text=values, texttemplate="%{text}", colorscale="Blues",
                               showscale=False, xgap=1, ygap=1,
                               hovertemplate="%{y} ∩ %{x}: %{z} pairs<extra></extra>"))
    fig.update_layout(height=110 + 34 * len(names), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      xaxis={"side": "top", "tickangle": -45}, yaxis={"autorange": "reversed"})
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
