"""What the Explore and Export pages compute, without Streamlit: the user's controls -> the selection they make.

Kept free of `streamlit` so the page logic is tested directly and the bench can time it. Everything
here reads the margin frame (core.selection.margins.load_margins) and never the full texts. The rest of
Explore is split by concern: explore_brush (box / lasso selections), explore_figures (scatter,
histograms), explore_tables (pair table, pair viewer data, overlap matrix), explore_shift (m_im before
vs after a re-score), explore_frame (what is computed once per margin frame and reused by every rerun).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from marginlens.app.explore_frame import frame_columns
from marginlens.core.selection.filters import filter_mask, parse_filter
from marginlens.core.selection.margin_sources import MarginSources, margin_sources
from marginlens.core.selection.metrics import DEFAULT_METRIC, DEFAULT_PARAMS, get_metric, metric_names
from marginlens.core.selection.select import DEFAULT_RATIO, Selection, SelectionSpec, select

COLOR_BY = ("score", "selection", "quadrant")
DEFAULT_MAX_POINTS = 2_000  # points drawn on top of the density view; selections apply to every pair


@dataclass
class ExploreControls:
    """The user's choices on Explore; kept in session state so Export sees the same selection."""

    metric: str = DEFAULT_METRIC
    weight: float = DEFAULT_PARAMS.weight
    ratio: float = DEFAULT_RATIO
    signed: bool = DEFAULT_PARAMS.signed
    seed: int = DEFAULT_PARAMS.seed
    threshold: float = DEFAULT_PARAMS.threshold  # tau of the threshold rule
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
            threshold=float(self.threshold),
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
    """Selection, membership and quadrants for the controls; MarginLensError for bad controls or data.

    Kept for the last few control settings of each frame: a rerun that changes no selection control
    (a box selection, a sort, an opened pair, another tab) reuses the view instead of ranking 1M pairs
    again. Callers never mutate a view."""
    spec = controls.spec()
    key = ("view", spec.metric, spec.weight, spec.signed, spec.ratio, spec.seed, tuple(controls.filters),
           spec.filter_stage, controls.im_axis, metric_names(), spec.threshold)
    return frame_columns(margins).recent(key, lambda: _compute_view(margins, controls, texts))


def _compute_view(margins: pd.DataFrame, controls: ExploreControls, texts: Any) -> ExploreView:
    selection = select(margins, controls.spec(), texts)
    n = len(margins)
    selected = np.zeros(n, dtype=bool)
    selected[selection.positions] = True
    candidates = np.isfinite(selection.scores)
    quads = frame_columns(margins).quadrants(controls.im_axis)  # the same for every other control: cached
    if quads is not None:
        labels, ex_split, im_split = quads.labels, quads.ex_split, quads.im_split
    else:
        labels, ex_split, im_split = np.full(n, "", dtype=object), None, None
    threshold = float(selection.scores[selection.positions[-1]]) if selection.positions.size else None
    return ExploreView(selection, selected, candidates, labels, ex_split, im_split, threshold)


def sources_of(margins: pd.DataFrame) -> MarginSources:
    """Which margins the frame has and which metrics run on them (core.selection.margin_sources), once per frame."""
    # keyed by the registry too: a metric registered later (a plug-in, a test) is offered at once
    return frame_columns(margins).memo(("sources", metric_names()), lambda: margin_sources(margins))


def available_metrics(margins: pd.DataFrame) -> tuple[str, ...]:
    """The registered metrics whose margins the frame has (every one of them can rank it)."""
    return sources_of(margins).runnable


def margin_note(margins: pd.DataFrame) -> str | None:
    """The plain sentences on a missing margin and what still works; None when the frame has both."""
    return " ".join(sources_of(margins).notes) or None


def effective_controls(margins: pd.DataFrame, controls: ExploreControls) -> tuple[ExploreControls, str | None]:
    """The controls with a metric that can rank the frame, and margin_note's sentences (None with both
    margins): a metric needing a margin the frame lacks falls back to the first that runs (explicit,
    implicit or random, in registry order), never to an error."""
    runnable, note = available_metrics(margins), margin_note(margins)
    if controls.metric in runnable or controls.metric not in metric_names():
        return controls, note  # an unknown name fails in spec(), with the choices
    return dataclasses.replace(controls, metric=runnable[0]), note


def scale_note(attrs: dict[str, Any]) -> str:
    """What the numbers on the charts and in the table measure, in the units of the frame's margins."""
    form = attrs.get("m_im_form")
    if form == "dpo":
        im = ("m_im is beta times the policy's log-ratio to the reference on the chosen answer minus that on the "
              "rejected one (summed log-probabilities, nats)")
    else:
        im = ("m_im is the policy's mean per-token log-probability of the chosen answer minus that of the rejected "
              "one (nats/token)")
    return ("Scores (M_AP and the baselines) are z-scores: standard deviations above (+) or below (-) the mean over "
            "the candidates, so 0 is an average pair, ±1 common, beyond ±2 rare; the top-k are the highest. m_ex "
            "is in the reward model's (or the dataset's scores') own units. " + im + ": above 0 the policy "
            "prefers the chosen answer, below 0 the rejected one; near 0 it has not decided yet (M_AP favours "
            "these), a large |m_im| means it has, either way.")


def needs_texts(controls: ExploreControls) -> bool:
    return any(parse_filter(f).op == "~" for f in controls.filters)


def filtered_mask(margins: pd.DataFrame, controls: ExploreControls, texts: Any = None) -> np.ndarray:
    """Rows passing the user's filters (what the table shows before any brush)."""
    filters = controls.spec().filters
    return filter_mask(margins, filters, texts) if filters else np.ones(len(margins), dtype=bool)
