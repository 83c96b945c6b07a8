"""Where single-margin metrics disagree (DESIGN.md section 1, "Contradictions").

Every function takes plain numpy arrays or a margin frame (core.selection.margins.load_margins) and returns
plain dicts/lists, so the dashboard and the CLI render the same data.

Quadrants split the (m_ex, implicit) plane at two thresholds (medians by default). The implicit
axis is |m_im| by default, the quantity M_AP penalises; `im_axis="signed"` splits on m_im itself.
"High" means strictly above the threshold, so pairs on a median count as low.
  high_potential   high m_ex, low implicit    M_AP keeps these
  already_learned  high m_ex, high implicit   (with m_im < 0: the model contradicts the label)
  ambiguous        low m_ex,  low implicit    little signal
  model_confident  low m_ex,  high implicit   the model is sure where the reward model is not
Counts always report how many pairs of a quadrant have m_im < 0, so the sign stays visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from marginlens.core.errors import MarginLensError

QUADRANTS = ("high_potential", "already_learned", "ambiguous", "model_confident")
IM_AXES = ("abs", "signed")


@dataclass
class Quadrants:
    labels: np.ndarray  # one of QUADRANTS per pair ("" where a margin is missing)
    ex_split: float
    im_split: float
    im_axis: str
    counts: list[dict[str, Any]]  # one row per quadrant: quadrant, n, share, n_negative_im, mean_m_ex, mean_m_im


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
    names = np.array(QUADRANTS, dtype=object)
    labels = np.where(ok, names[code], "")
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


def overlap_table(selected: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Intersection size and Jaccard index of the selected sets of every pair of metrics."""
    arrays = {name: np.asarray(idx, dtype=np.int64) for name, idx in selected.items()}
    n = max((int(a.max()) + 1 for a in arrays.values() if a.size), default=0)
    sets = {}
    for name, idx in arrays.items():  # boolean masks: set algebra in O(n), vectorised
        sets[name] = np.zeros(n, dtype=bool)
        sets[name][idx] = True
    rows = []
    for a, b in combinations(sets, 2):
        inter = int(np.count_nonzero(sets[a] & sets[b]))
        union = int(np.count_nonzero(sets[a] | sets[b]))
        rows.append(
            {
                "metric_a": a,
                "metric_b": b,
                "size_a": int(np.count_nonzero(sets[a])),
                "size_b": int(np.count_nonzero(sets[b])),
                "intersection": inter,
                "jaccard": inter / union if union else 1.0,
            }
        )
    return rows


def _rank_corr(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    from scipy import stats

    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None, None  # undefined for a constant column; None instead of NaN
    rho = stats.spearmanr(a, b).statistic
    tau = stats.kendalltau(a, b).statistic
    return float(rho), float(tau)


def rank_correlations(scores: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Spearman rho and Kendall tau-b between every pair of metric score arrays (same candidates).

    None where a correlation is undefined (a constant score column).
    """
    arrays = {name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}
    rows = []
    for a, b in combinations(arrays, 2):
        ok = np.isfinite(arrays[a]) & np.isfinite(arrays[b])
        rho, tau = _rank_corr(arrays[a][ok], arrays[b][ok])
        rows.append({"metric_a": a, "metric_b": b, "n": int(ok.sum()), "spearman": rho, "kendall": tau})
    return rows


def noise_suspects(margins: pd.DataFrame, top: int = 50, ex_split: float | None = None) -> list[dict[str, Any]]:
    """Pairs with a large explicit margin the policy strongly disagrees with, most suspicious first.

    Candidates: m_ex above `ex_split` (median by default) and m_im < 0. Suspicion is
    z(m_ex) - z(m_im) over all pairs with both margins: high reward gap, strongly negative implicit.
    Ties: source order.
    """
    m_ex = margins["m_ex"].to_numpy(dtype=np.float64, na_value=np.nan)
    m_im = margins["m_im"].to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(m_ex) & np.isfinite(m_im)
    if not ok.any():
        return []
    split = float(np.median(m_ex[ok])) if ex_split is None else ex_split

    def z(v: np.ndarray) -> np.ndarray:
        std = v[ok].std()
        return (v - v[ok].mean()) / std if std > 0 else np.zeros_like(v)

    suspicion = z(m_ex) - z(m_im)
    pos = np.flatnonzero(ok & (m_ex > split) & (m_im < 0))
    pos = pos[np.argsort(-suspicion[pos], kind="stable")][:top]
    preview = margins["prompt_preview"] if "prompt_preview" in margins else None
    out = []
    for rank, p in enumerate(pos, start=1):
        out.append(
            {
                "rank": rank,
                "position": int(p),
                "pair_id": str(margins["pair_id"].iat[p]),
                "source_row": int(margins["source_row"].iat[p]) if "source_row" in margins else int(p),
                "m_ex": float(m_ex[p]),
                "m_im": float(m_im[p]),
                "suspicion": float(suspicion[p]),
                "prompt_preview": str(preview.iat[p]) if preview is not None else "",
            }
        )
    return out


def compare_metrics(
    margins: pd.DataFrame,
    ratio: float | None = None,
    count: int | None = None,
    weight: float = 1.0,
    signed: bool = False,
    seed: int = 42,
    metrics: tuple[str, ...] = ("map", "explicit", "implicit", "random"),
    ex_split: float | None = None,
    im_split: float | None = None,
    im_axis: str = "abs",
    suspects: int = 20,
) -> dict[str, Any]:
    """The whole contradiction report for `marginlens compare` and the dashboard.

    Every metric is scored on the same candidate set: pairs having both margins. Returns
    {"n", "k", "selected": {metric: positions}, "overlap": [...], "correlations": [...],
     "quadrants": Quadrants, "suspects": [...], "warnings": [...]}; positions index frame rows.
    """
    from marginlens.core.selection.metrics import metric_scores
    from marginlens.core.selection.select import k_for, top_k

    m_ex = margins["m_ex"].to_numpy(dtype=np.float64, na_value=np.nan)
    m_im = margins["m_im"].to_numpy(dtype=np.float64, na_value=np.nan)
    cand = np.flatnonzero(np.isfinite(m_ex) & np.isfinite(m_im))
    if cand.size == 0:
        name = margins.attrs.get("dataset", "this dataset")
        raise MarginLensError(f"{name!r} has no pair with both an explicit and an implicit margin to compare")
    k = k_for(cand.size, ratio, count)
    selected: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    for metric in metrics:
        result = metric_scores(m_ex[cand], m_im[cand], metric, weight, signed, seed)
        warnings += [w for w in result.warnings if w not in warnings]
        scores[metric] = result.scores
        selected[metric] = cand[top_k(result.scores, k)]
    return {
        "n": int(cand.size),
        "k": k,
        "selected": selected,
        "overlap": overlap_table(selected),
        "correlations": rank_correlations(scores),
        "quadrants": quadrant_labels(m_ex, m_im, ex_split, im_split, im_axis),
        "suspects": noise_suspects(margins, top=suspects),
        "warnings": warnings,
    }
