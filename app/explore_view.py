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
from marginlens.core.selection.metrics import DEFAULT_METRIC, DEFAULT_PARAMS, get_metric, metric_names, zscore
from marginlens.core.selection.quadrants import QUADRANTS
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
    # M_AP's two terms per frame row (NaN outside the candidates), named as the table shows them; empty for the
    # other metrics, whose score is a single term
    terms: dict[str, np.ndarray] = field(default_factory=dict)

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
    return ExploreView(selection, selected, candidates, labels, ex_split, im_split, threshold,
                       map_terms(margins, controls, candidates))


Z_EX = "z(m_ex)"


def wz_label(signed: bool) -> str:
    return "w·z(m_im)" if signed else "w·z(|m_im|)"


def map_terms(margins: pd.DataFrame, controls: ExploreControls, candidates: np.ndarray) -> dict[str, np.ndarray]:
    """z(m_ex) and w·z(|m_im|) (w·z(m_im) when signed) per frame row, z over the candidates as the metric takes
    it, so that score = z(m_ex) - w·z(|m_im|) row by row; {} for every metric but M_AP."""
    if controls.metric != "map":
        return {}
    cols = frame_columns(margins)
    pos = np.flatnonzero(candidates)
    m_im = cols.m_im[pos] if controls.signed else np.abs(cols.m_im[pos])
    z_ex, z_im = np.full(len(margins), np.nan), np.full(len(margins), np.nan)
    z_ex[pos] = zscore(cols.m_ex[pos])[0]
    z_im[pos] = float(controls.weight) * zscore(m_im)[0]
    return {Z_EX: z_ex, wz_label(controls.signed): z_im}


def quadrant_meanings(im_axis: str = "abs") -> dict[str, str]:
    """One line per quadrant name, as core.selection.quadrants defines them (split at the medians, "high" strictly
    above the split), in the words of the axis the quadrants were split on."""
    if im_axis == "abs":
        kept = "a clear label the policy has not decided on yet"
        decided = ("the policy has made up its mind, either way: a pair with m_im < 0 (it prefers the rejected "
                   "answer) lands here too, so this is not \"already learned\"")
        im = "|m_im|"
    else:
        kept = "a clear label the policy barely follows, or contradicts (m_im < 0)"
        decided = "a clear label the policy already follows by more than most pairs"
        im = "m_im"
    return dict(zip(QUADRANTS, (
        f"high m_ex, low {im}: {kept}; M_AP favours these",
        f"high m_ex, high {im}: {decided}",
        f"low m_ex, low {im}: little signal in either margin",
        f"low m_ex, high {im}: the policy is sure where the explicit margin is not",
    ), strict=True))


def quadrant_legend(im_axis: str = "abs", ex_split: float | None = None, im_split: float | None = None) -> str:
    """The four quadrant names and what each means, as markdown lines (with the splits when given)."""
    im = "|m_im|" if im_axis == "abs" else "m_im"
    splits = (f" (split at the medians: m_ex {ex_split:.3f}, {im} {im_split:.3f}; a pair on a split counts as low)"
              if ex_split is not None and im_split is not None else " (split at the medians; on a split counts as low)")
    return ("**Quadrants**" + splits + "  \n"
            + "  \n".join(f"`{name}` — {line}" for name, line in quadrant_meanings(im_axis).items()))


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
