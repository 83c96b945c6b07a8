"""What the Explore and Export pages compute, without Streamlit: controls -> selection, brush, figures, tables.

Kept free of `streamlit` so the page logic is tested directly and the bench can time it. Everything
here reads the margin frame (core.selection.margins.load_margins) and never the full texts, except
`pair_details`, which reads one pair on demand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.contradictions import quadrant_labels
from marginlens.core.selection.filters import filter_mask, parse_filter
from marginlens.core.selection.margins import pair_texts
from marginlens.core.selection.metrics import METRICS
from marginlens.core.selection.select import Selection, SelectionSpec, select
from marginlens.core.workspace import Workspace

COLOR_BY = ("score", "selection", "quadrant")
TABLE_CHARS = 80  # previews in the table and hover labels: enough to recognise a pair, never the full text
HOVER_CHARS = 60
DEFAULT_MAX_POINTS = 20_000
TABLE_LIMIT = 500
QUADRANT_COLORS = {
    "high_potential": "#2e7d32",
    "already_learned": "#1565c0",
    "ambiguous": "#9e9e9e",
    "model_confident": "#ef6c00",
    "": "#cccccc",
}


@dataclass
class ExploreControls:
    """The user's choices on Explore; kept in session state so Export sees the same selection."""

    metric: str = "map"
    weight: float = 1.0
    ratio: float = 0.4
    signed: bool = False
    seed: int = 42
    filters: list[str] = field(default_factory=list)  # core.selection.filters CLI syntax, e.g. "m_ex>=0.5"
    filter_stage: str = "before"
    im_axis: str = "abs"
    color_by: str = "score"
    max_points: int = DEFAULT_MAX_POINTS

    def spec(self) -> SelectionSpec:
        if self.metric not in METRICS:
            raise MarginLensError(f"unknown metric {self.metric!r} (expected one of {', '.join(METRICS)})")
        return SelectionSpec(
            metric=self.metric, weight=float(self.weight), signed=bool(self.signed), ratio=float(self.ratio),
            seed=int(self.seed), filters=[parse_filter(f) for f in self.filters], filter_stage=self.filter_stage,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ExploreControls:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass
class ExploreView:
    """One evaluation of the controls over a margin frame."""

    selection: Selection
    selected: np.ndarray  # bool per frame row: in the top-k
    candidates: np.ndarray  # bool per frame row: ranked (has the margins, passed "before" filters)
    quadrants: np.ndarray  # quadrant label per frame row ("" without both margins)
    ex_split: float | None
    im_split: float | None
    threshold: float | None  # lowest score that is still selected

    @property
    def scores(self) -> np.ndarray:
        return self.selection.scores


def compute_view(margins: pd.DataFrame, controls: ExploreControls, texts: Any = None) -> ExploreView:
    """Selection, membership and quadrants for the controls; MarginLensError for bad controls or data."""
    selection = select(margins, controls.spec(), texts)
    n = len(margins)
    selected = np.zeros(n, dtype=bool)
    selected[selection.positions] = True
    candidates = np.isfinite(selection.scores)
    m_ex = margins["m_ex"].to_numpy(np.float64, na_value=np.nan)
    m_im = margins["m_im"].to_numpy(np.float64, na_value=np.nan)
    if (np.isfinite(m_ex) & np.isfinite(m_im)).any():
        quads = quadrant_labels(m_ex, m_im, im_axis=controls.im_axis)
        labels, ex_split, im_split = quads.labels, quads.ex_split, quads.im_split
    else:
        labels, ex_split, im_split = np.full(n, "", dtype=object), None, None
    threshold = float(selection.scores[selection.positions].min()) if selection.positions.size else None
    return ExploreView(selection, selected, candidates, labels, ex_split, im_split, threshold)


def effective_controls(margins: pd.DataFrame, controls: ExploreControls) -> tuple[ExploreControls, str | None]:
    """Without any implicit margin (no policy scored yet) M_AP and implicit cannot rank: fall back to the
    explicit metric, and say so, rather than showing nothing."""
    if controls.metric in ("map", "implicit") and not margins["m_im"].notna().any():
        note = "No implicit margins yet (run a policy on the Score page): ranking by the explicit metric meanwhile."
        return dataclasses.replace(controls, metric="explicit"), note
    return controls, None


def needs_texts(controls: ExploreControls) -> bool:
    return any(parse_filter(f).op == "~" for f in controls.filters)


# ---- brush (box / lasso selection on the scatter) -------------------------------------------------

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
    note = f"restricted to the scatter selection ({describe_brush(brush)}): {keep.size} of {selection.positions.size}"
    return dataclasses.replace(selection, positions=keep, pair_ids=[p for p in selection.pair_ids if p in ids],
                               warnings=[*selection.warnings, note])


# ---- figures ------------------------------------------------------------------------------------

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


# ---- table and pair viewer -----------------------------------------------------------------------

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


def filtered_mask(margins: pd.DataFrame, controls: ExploreControls, texts: Any = None) -> np.ndarray:
    """Rows passing the user's filters (what the table shows before any brush)."""
    filters = controls.spec().filters
    return filter_mask(margins, filters, texts) if filters else np.ones(len(margins), dtype=bool)


def overlap_matrix(report: dict[str, Any]) -> pd.DataFrame:
    """compare_metrics' pairwise overlap rows as a square matrix of intersection sizes (diagonal = k)."""
    metrics = list(report["selected"])
    matrix = pd.DataFrame(0, index=metrics, columns=metrics, dtype=np.int64)
    for m in metrics:
        matrix.loc[m, m] = len(report["selected"][m])
    for row in report["overlap"]:
        matrix.loc[row["metric_a"], row["metric_b"]] = row["intersection"]
        matrix.loc[row["metric_b"], row["metric_a"]] = row["intersection"]
    return matrix


# ---- implicit margins before and after (e.g. re-scored with the trained model) --------------------

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
