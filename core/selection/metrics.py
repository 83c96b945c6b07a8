"""Per-pair selection scores: M_AP and its baselines (DESIGN.md section 1), vectorised over numpy arrays.

All metrics live on one z-scored scale so they can be compared side by side:
  explicit  z(m_ex)                       larger explicit margin is better ("M_r")
  implicit  -z(|m_im|)                    smaller absolute implicit margin is better ("M_pi")
  map       z(m_ex) - w * z(|m_im|)       alignment potential, the reference's "rm-logp"/"rm-xlogp"
  random    seeded random ranks           top-k of these equals the reference's random sample
`signed=True` replaces |m_im| by m_im in `implicit` and `map` (the variant DESIGN.md asks to offer).

z uses the population std (ddof=0), as numpy's default `std()` in the reference does. A constant
column has std 0, where the reference divides 0 by 0 and ranks NaNs; here its z-score is 0 for every
pair instead (the column then carries no ranking information) and the result records a warning, so a
score is never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from marginlens.core.errors import MarginLensError

METRICS = ("map", "explicit", "implicit", "random")
DEFAULT_WEIGHT = 1.0
DEFAULT_SEED = 42


@dataclass
class MetricResult:
    """Scores for one metric over a candidate set (higher = selected first)."""

    metric: str
    scores: np.ndarray  # float64, one per candidate, never NaN
    weight: float
    signed: bool
    seed: int
    warnings: list[str] = field(default_factory=list)


def zscore(values: np.ndarray, name: str = "values") -> tuple[np.ndarray, str | None]:
    """(v - mean) / std with the population std; a constant column gives zeros plus a warning."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v.copy(), None
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v)).sum())
        raise MarginLensError(f"{name} has {bad} missing or non-finite values; score or filter them out first")
    mean = v.mean()
    std = v.std()
    if std == 0 or not np.isfinite(std):
        return np.zeros_like(v), f"{name} is constant ({mean:g}) over {v.size} pairs: its z-score is 0 for all"
    return (v - mean) / std, None


def _random_scores(n: int, seed: int) -> np.ndarray:
    # The reference draws `np.random.seed(seed); np.random.choice(N, k, replace=False)`, which is
    # `RandomState(seed).permutation(N)[:k]`. Scoring each pair by its position in that permutation
    # makes the top-k of these scores exactly the reference's sample, for every k at once.
    perm = np.random.RandomState(seed).permutation(n)
    scores = np.empty(n, dtype=np.float64)
    scores[perm] = np.arange(n, 0, -1, dtype=np.float64)
    return scores


def metric_scores(
    m_ex: np.ndarray | None,
    m_im: np.ndarray | None,
    metric: str = "map",
    weight: float = DEFAULT_WEIGHT,
    signed: bool = False,
    seed: int = DEFAULT_SEED,
    n: int | None = None,
) -> MetricResult:
    """Score every candidate pair by `metric`; m_ex / m_im are aligned float arrays (None if unavailable).

    z-scores are taken over exactly the arrays given (the candidate set), as the reference does.
    `n` (the candidate count) is only needed for `random` when neither margin array is given.
    """
    if metric not in METRICS:
        raise MarginLensError(f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
    if not np.isfinite(weight):
        raise MarginLensError(f"weight must be a finite number, got {weight!r}")
    warnings: list[str] = []

    def need(values: np.ndarray | None, what: str) -> np.ndarray:
        if values is None:
            raise MarginLensError(f"metric {metric!r} needs the {what} margin, which this dataset does not have")
        return np.asarray(values, dtype=np.float64)

    def z(values: np.ndarray, name: str) -> np.ndarray:
        out, warning = zscore(values, name)
        if warning:
            warnings.append(warning)
        return out

    im_name = "m_im" if signed else "|m_im|"
    if metric == "random":
        n = len(m_ex) if m_ex is not None else len(m_im) if m_im is not None else n
        if n is None:
            raise MarginLensError("metric 'random' needs the number of candidate pairs")
        scores = _random_scores(n, seed)
    elif metric == "explicit":
        scores = z(need(m_ex, "explicit"), "m_ex")
    else:
        im = need(m_im, "implicit")
        z_im = z(im if signed else np.abs(im), im_name)
        if metric == "implicit":
            scores = -z_im
        else:
            scores = z(need(m_ex, "explicit"), "m_ex") - weight * z_im
    return MetricResult(metric, scores, float(weight), bool(signed), int(seed), warnings)
