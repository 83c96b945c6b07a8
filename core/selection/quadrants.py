"""Quadrants of the (m_ex, implicit) plane: where single-margin metrics disagree (the
paper's motivating contradictions).

Quadrants split the plane at two thresholds (medians by default). The implicit axis is |m_im| by
default, the quantity M_AP penalises; `im_axis="signed"` splits on m_im itself. "High" means strictly
above the threshold, so pairs on a median count as low.
  high_potential   high m_ex, low implicit    M_AP keeps these
  policy_decided   high m_ex, high implicit   the policy has made up its mind, either way: with the |m_im|
                                              split a pair with m_im < 0 lands here too (it contradicts the
                                              label), so this is not "already learned"
  ambiguous        low m_ex,  low implicit    little signal
  model_confident  low m_ex,  high implicit   the model is sure where the reward model is not
Counts always report how many pairs of a quadrant have m_im < 0, so the sign stays visible.
The count table is a list of plain rows, so the dashboard and the CLI render the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from marginlens.core.errors import MarginLensError

QUADRANTS = ("high_potential", "policy_decided", "ambiguous", "model_confident")
IM_AXES = ("abs", "signed")


@dataclass
class Quadrants:
    """Quadrant label of every pair and the count table, with the thresholds actually used."""

    labels: np.ndarray  # one of QUADRANTS per pair ("" where a margin is missing)
    ex_split: float
    im_split: float
    im_axis: str
    counts: list[dict[str, Any]]  # one row per quadrant: quadrant, n, share, n_negative_im, mean_m_ex, mean_m_im

    def summary(self) -> dict[str, Any]:
        """Thresholds and counts without the per-pair labels (what reports print)."""
        return {"ex_split": self.ex_split, "im_split": self.im_split, "im_axis": self.im_axis, "counts": self.counts}


def implicit_axis(m_im: np.ndarray, im_axis: str = "abs") -> np.ndarray:
    if im_axis not in IM_AXES:
        raise MarginLensError(f"implicit axis must be 'abs' or 'signed', got {im_axis!r}")
    m_im = np.asarray(m_im, dtype=np.float64)
    return np.abs(m_im) if im_axis == "abs" else m_im


def default_splits(m_ex: np.ndarray, m_im: np.ndarray, im_axis: str = "abs") -> tuple[float, float]:
    """Medians of m_ex and of the implicit axis over the pairs that have both margins."""
    m_ex = np.asarray(m_ex, dtype=np.float64)
    y = implicit_axis(m_im, im_axis)
    ok = np.isfinite(m_ex) & np.isfinite(y)
    if not ok.any():
        raise MarginLensError("no pair has both an explicit and an implicit margin: quadrants need both")
    return float(np.median(m_ex[ok])), float(np.median(y[ok]))


def quadrant_labels(
    m_ex: np.ndarray,
    m_im: np.ndarray,
    ex_split: float | None = None,
    im_split: float | None = None,
    im_axis: str = "abs",
) -> Quadrants:
    """Quadrant of every pair plus a count table; thresholds default to the medians."""
    m_ex = np.asarray(m_ex, dtype=np.float64)
    m_im = np.asarray(m_im, dtype=np.float64)
    y = implicit_axis(m_im, im_axis)
    if ex_split is None or im_split is None:
        med_ex, med_im = default_splits(m_ex, m_im, im_axis)
        ex_split = med_ex if ex_split is None else ex_split
        im_split = med_im if im_split is None else im_split
    ok = np.isfinite(m_ex) & np.isfinite(y)
    high_ex = m_ex > ex_split
    high_im = y > im_split
    # index = 2*low_ex + high_im maps onto QUADRANTS' order
    code = np.where(high_ex, 0, 2) + high_im.astype(int)
    # one gather from the names with "" appended (code 4: a margin is missing); np.where over two object
    # arrays of a million strings costs several times more
    labels = np.array([*QUADRANTS, ""], dtype=object)[np.where(ok, code, len(QUADRANTS))]
    total = int(ok.sum())
    counts = []
    for i, name in enumerate(QUADRANTS):
        mask = ok & (code == i)
        n = int(mask.sum())
        counts.append(
            {
                "quadrant": name,
                "n": n,
                "share": n / total if total else 0.0,
                "n_negative_im": int((m_im[mask] < 0).sum()),
                "mean_m_ex": float(m_ex[mask].mean()) if n else None,
                "mean_m_im": float(m_im[mask].mean()) if n else None,
            }
        )
    return Quadrants(labels, float(ex_split), float(im_split), im_axis, counts)
