"""What the Explore and Export pages compute, without Streamlit: the user's controls -> the selection they make.

Kept free of `streamlit` so the page logic is tested directly and the bench can time it. Everything
here reads the margin frame (core.selection.margins.load_margins) and never the full texts. The rest of
Explore is split by concern: explore_brush (box / lasso selections), explore_figures (scatter,
histograms), explore_tables (pair table, pair viewer data, overlap matrix), explore_shift (m_im before
vs after a re-score).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from marginlens.core.selection.filters import filter_mask, parse_filter
from marginlens.core.selection.metrics import DEFAULT_METRIC, DEFAULT_PARAMS, get_metric, metric_names
from marginlens.core.selection.quadrants import quadrant_labels
from marginlens.core.selection.select import DEFAULT_RATIO, Selection, SelectionSpec, select

COLOR_BY = ("score", "selection", "quadrant")
DEFAULT_MAX_POINTS = 20_000
# ranks by m_ex alone, so it still works before any policy has been scored
FALLBACK_METRIC = "explicit"


@dataclass
class ExploreControls:
    """The user's choices on Explore; kept in session state so Export sees the same selection."""

    metric: str = DEFAULT_METRIC
    weight: float = DEFAULT_PARAMS.weight
    ratio: float = DEFAULT_RATIO
    signed: bool = DEFAULT_PARAMS.signed
    seed: int = DEFAULT_PARAMS.seed
    filters: list[str] = field(default_factory=list)  # core.selection.filters CLI syntax, e.g. "m_ex>=0.5"
    filter_stage: str = "before"
    im_axis: str = "abs"
    color_by: str = "score"
    max_points: int = DEFAULT_MAX_POINTS

    def spec(self) -> SelectionSpec:
        get_metric(self.metric)  # an unknown name (e.g. from an older session) fails here, with the choices
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
    """Without any implicit margin (no policy scored yet) a metric that needs it cannot rank: fall back to
    the explicit metric, and say so, rather than showing nothing."""
    needs = get_metric(controls.metric).needs if controls.metric in metric_names() else ()
    if "m_im" in needs and not margins["m_im"].notna().any():
        note = "No implicit margins yet (run a policy on the Score page): ranking by the explicit metric meanwhile."
        return dataclasses.replace(controls, metric=FALLBACK_METRIC), note
    return controls, None


def needs_texts(controls: ExploreControls) -> bool:
    return any(parse_filter(f).op == "~" for f in controls.filters)


def filtered_mask(margins: pd.DataFrame, controls: ExploreControls, texts: Any = None) -> np.ndarray:
    """Rows passing the user's filters (what the table shows before any brush)."""
    filters = controls.spec().filters
    return filter_mask(margins, filters, texts) if filters else np.ones(len(margins), dtype=bool)
