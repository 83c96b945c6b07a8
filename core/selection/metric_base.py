"""The metric registry's ground: z-scores, the inputs a formula reads, the Metric base class, the registry.

The metrics themselves are core.selection.metrics (the paper's four) and core.selection.published_rules (rules
from other papers); import core.selection.metrics, which registers both, rather than this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

import numpy as np
from marginlens.core.errors import MarginLensError

Direction = Literal["larger", "smaller"]
# what a missing margin column is called in errors, and how the user gets it
MARGIN_COLUMNS = {
    "m_ex": ("explicit", "add a reward score table"),
    "m_im": ("implicit", "score it with a policy model first"),
    # m_im when the frame holds it in the DPO form (a reference table joined), NaN in the SimPO form
    "m_im_dpo": ("DPO-form implicit",
                 "its m_im is in the SimPO form or missing: score a reference model as well "
                 "(`marginlens score NAME --reference MODEL`) and select with `--reference TABLE`, the reference "
                 "table's fingerprint, which makes m_im beta * [(pi_w - ref_w) - (pi_l - ref_l)]"),
}


@dataclass(frozen=True)
class MetricParams:
    """The knobs a metric may read; the field defaults are every metric's defaults."""

    weight: float = 1.0  # w of M_AP: 1.0 in the paper's offline runs and in its self-play scripts' default
    signed: bool = False  # m_im instead of |m_im|
    seed: int = 42  # the reference's np.random.seed(42)
    # tau of the reward-margin threshold rule (m_ex >= tau), in the explicit margin's own units; 0 keeps the
    # pairs whose reward does not contradict the label
    threshold: float = 0.0


PARAM_NAMES = tuple(f.name for f in fields(MetricParams))
DEFAULT_PARAMS = MetricParams()
DEFAULT_METRIC = "map"


def zscore(values: np.ndarray, name: str = "values", axis: int | None = None) -> tuple[np.ndarray, str | None]:
    """(v - mean) / std with the population std; a constant column gives zeros plus a warning.

    Worked example (5 pairs, repeated exactly by tests/test_metrics.py; the top-k half is in
    core.selection.select.top_k):

        pair           0     1     2     3     4
        m_ex           6     4     3     2     0      mean 3,   std sqrt(20/5) = 2
        m_im         0.0  -1.5   1.0   2.0  -3.0
        |m_im|       0.0   1.5   1.0   2.0   3.0      mean 1.5, std sqrt(5/5)  = 1
        z(m_ex)      1.5   0.5   0.0  -0.5  -1.5
        z(|m_im|)   -1.5   0.0  -0.5   0.5   1.5
        M_AP (w=1)   3.0   0.5   0.5  -1.0  -3.0      pairs 1 and 2 tie exactly

    The sample std (ddof=1) would scale every z here by sqrt(4/5): the same ranking, but not the
    reference's numbers. With `axis`, each slice along it is z-scored on its own (a constant slice gives
    zeros; the warning counts them).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v.copy(), None
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v)).sum())
        raise MarginLensError(f"{name} has {bad} missing or non-finite values; score or filter them out first")
    if axis is not None:
        # one z-score per slice along `axis` (the theory simulation's seeds); a constant slice scores 0
        slice_std = v.std(axis=axis, keepdims=True)
        z = np.divide(v - v.mean(axis=axis, keepdims=True), slice_std, out=np.zeros_like(v), where=slice_std > 0)
        constant = int((slice_std == 0).sum())
        return z, (f"{name} is constant in {constant:,} of {slice_std.size:,} slices: their z-scores are 0"
                   if constant else None)
    mean = v.mean()
    std = v.std()
    if std == 0 or not np.isfinite(std):
        return np.zeros_like(v), f"{name} is constant ({mean:g}) over {v.size:,} pairs: its z-score is 0 for all"
    return (v - mean) / std, None


class MarginInputs:
    """The candidate set's margin columns as a formula reads them; z-scores record their warnings."""

    def __init__(self, columns: Mapping[str, np.ndarray], n: int):
        self.columns = {name: np.asarray(v, dtype=np.float64) for name, v in columns.items()}
        self.n = n
        self.warnings: list[str] = []

    def __getitem__(self, column: str) -> np.ndarray:
        return self.columns[column]

    def z(self, name: str, values: np.ndarray | None = None) -> np.ndarray:
        """z-score of column `name`, or of `values` (a quantity derived from the columns) called `name`."""
        out, warning = zscore(self.columns[name] if values is None else values, name)
        if warning:
            self.warnings.append(warning)
        return out

    def z_implicit(self, signed: bool) -> np.ndarray:
        """z(|m_im|), or z(m_im) for the signed variant."""
        m_im = self.columns["m_im"]
        return self.z("m_im", m_im) if signed else self.z("|m_im|", np.abs(m_im))


@dataclass
class MetricResult:
    """Scores for one metric over a candidate set (higher = selected first)."""

    metric: str
    scores: np.ndarray  # float64, one per candidate, never NaN
    params: MetricParams
    warnings: list[str] = field(default_factory=list)
    eligible: np.ndarray | None = None  # bool per candidate: the pairs the top-k may hold (None: all)
    rule: str = ""  # what `eligible` keeps, for the warning when fewer than k pass ("m_ex >= 0.5")


class Metric:
    """One selection metric. Subclasses set the class attributes and `formula`, then `@register`."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # margin-frame columns; pairs missing one are never candidates
    uses: ClassVar[tuple[str, ...]] = ()  # the MetricParams fields the formula reads (the UI enables those)
    direction: ClassVar[Direction] = "larger"
    label: ClassVar[str] = ""  # short form for a picker; the name when empty
    description: ClassVar[str]  # one line for the UI and CLI help

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        raise NotImplementedError

    def eligible(self, x: MarginInputs, p: MetricParams) -> tuple[np.ndarray, str] | None:
        """(bool mask over the candidates, what it keeps) for a rule that filters before it ranks; None: all."""
        return None

    def swapped(self, x: MarginInputs, p: MetricParams) -> np.ndarray | None:
        """Bool mask over the candidates whose chosen and rejected a lab arm trains on exchanged (a rule that
        flips the pairs it judges mislabeled); None: none. Exports from `select` write pairs as labeled."""
        return None

    def score(self, columns: Mapping[str, np.ndarray | None], params: MetricParams = DEFAULT_PARAMS,
              n: int | None = None) -> MetricResult:
        """Score every candidate; `columns` are aligned float arrays (None or absent if unavailable).

        z-scores are taken over exactly the arrays given (the candidate set), as the reference does.
        `n` (the candidate count) is only needed when the metric reads no column.
        """
        if not np.isfinite(params.weight):
            raise MarginLensError(f"weight must be a finite number, got {params.weight!r}")
        if np.isnan(params.threshold):
            raise MarginLensError("threshold must be a number, got NaN")
        given = {name: v for name, v in columns.items() if v is not None}
        for column in self.needs:
            if column not in given:
                what = MARGIN_COLUMNS[column][0] + " margin" if column in MARGIN_COLUMNS else f"{column} column"
                raise MarginLensError(f"metric {self.name!r} needs the {what}, which this dataset does not have")
        if n is None:
            n = len(next(iter(given.values()))) if given else None
        if n is None:
            raise MarginLensError(f"metric {self.name!r} needs the number of candidate pairs")
        x = MarginInputs({name: given[name] for name in self.needs}, n)
        values = np.asarray(self.formula(x, params), dtype=np.float64)
        result = MetricResult(self.name, values if self.direction == "larger" else -values, params, x.warnings)
        if (kept := self.eligible(x, params)) is not None:
            result.eligible, result.rule = np.asarray(kept[0], dtype=bool), kept[1]
        return result

    def swapped_among(self, columns: Mapping[str, np.ndarray],
                      params: MetricParams = DEFAULT_PARAMS) -> np.ndarray | None:
        """`swapped` over aligned candidate columns (as `score` takes them); None when the metric swaps nothing."""
        given = {name: np.asarray(columns[name], dtype=np.float64) for name in self.needs}
        n = len(next(iter(given.values()))) if given else 0
        mask = self.swapped(MarginInputs(given, n), params)
        return None if mask is None else np.asarray(mask, dtype=bool)


_REGISTRY: dict[str, Metric] = {}


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: add a metric to the registry (names are unique; the order is the display order)."""
    if cls.name in _REGISTRY:
        raise MarginLensError(f"a metric named {cls.name!r} is already registered")
    unknown = [p for p in cls.uses if p not in PARAM_NAMES]
    if unknown or cls.direction not in ("larger", "smaller"):
        raise MarginLensError(f"metric {cls.name!r}: unknown parameter {unknown} or direction {cls.direction!r}")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    """Remove a metric (tests that register a temporary one)."""
    _REGISTRY.pop(name, None)


def metric_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_metric(name: str) -> Metric:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MarginLensError(f"unknown metric {name!r} (expected one of {', '.join(_REGISTRY)})") from None


def metric_scores(
    m_ex: np.ndarray | None,
    m_im: np.ndarray | None,
    metric: str = "map",
    weight: float = DEFAULT_PARAMS.weight,
    signed: bool = DEFAULT_PARAMS.signed,
    seed: int = DEFAULT_PARAMS.seed,
    n: int | None = None,
    threshold: float = DEFAULT_PARAMS.threshold,
) -> MetricResult:
    """`get_metric(metric).score` over the two margins (None if unavailable), for array-level callers."""
    return get_metric(metric).score({"m_ex": m_ex, "m_im": m_im}, MetricParams(weight, signed, seed, threshold), n)


def random_scores(n: int, seed: int) -> np.ndarray:
    # The reference draws `np.random.seed(seed); np.random.choice(N, k, replace=False)`, which is
    # `RandomState(seed).permutation(N)[:k]`. Scoring each pair by its position in that permutation
    # makes the top-k of these scores exactly the reference's sample, for every k at once.
    perm = np.random.RandomState(seed).permutation(n)
    scores = np.empty(n, dtype=np.float64)
    scores[perm] = np.arange(n, 0, -1, dtype=np.float64)
    return scores
