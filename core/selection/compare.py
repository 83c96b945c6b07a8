"""Where single-margin metrics disagree (the paper's motivating contradictions): top-k overlap, rank
correlations and the two lists of pairs whose margins contradict their label, assembled by `compare_metrics` into the report that `marginlens compare`
and the Explore page's Contradictions tab show.

Every function takes plain numpy arrays or a margin frame (core.selection.margins.load_margins); table
rows are plain dicts, so the dashboard (a DataFrame per table) and the CLI (text or JSON) render the
same data. Quadrants are core.selection.quadrants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.margin_sources import covered_sample, margin_sources, missing_note
from marginlens.core.selection.metrics import DEFAULT_PARAMS, MetricParams, get_metric
from marginlens.core.selection.quadrants import Quadrants, quadrant_labels
from marginlens.core.selection.select import k_for, top_k_eligible

# The two lists' names, as `marginlens compare` and Explore's Contradictions tab both print them: the first is
# the likeliest label noise; the second is noise only where the explicit margin itself can be wrong.
CONTRADICTED_TITLE = "Label contradicted by its explicit margin"
SUSPECTS_TITLE = "Policy contradicts a large explicit margin"


@dataclass
class CompareReport:
    """Every metric ranked on the same candidate set (pairs having both margins), and how they disagree."""

    n: int  # candidates
    k: int
    selected: dict[str, np.ndarray]  # metric -> top-k frame positions, best first
    overlap: list[dict[str, Any]]  # overlap_table rows
    correlations: list[dict[str, Any]]  # rank_correlations rows
    quadrants: Quadrants
    suspects: list[dict[str, Any]]  # noise_suspects rows (SUSPECTS_TITLE)
    warnings: list[str]
    contradicted: list[dict[str, Any]] = field(default_factory=list)  # label_contradictions rows
    contradicted_counts: dict[str, int] = field(default_factory=dict)  # its {"n", "both"}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`marginlens compare --json`): no positions, no per-pair quadrant labels."""
        return {"n": self.n, "k": self.k, "overlap": self.overlap, "correlations": self.correlations,
                "suspects": self.suspects, "contradicted": self.contradicted,
                "contradicted_counts": self.contradicted_counts, "warnings": self.warnings,
                "quadrants": self.quadrants.summary()}


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


@dataclass
class Ranks:
    """One score array's ranks: average (ties share the mean place), dense (1..distinct values), sort order."""

    average: np.ndarray
    dense: np.ndarray
    order: np.ndarray


def _ranks(v: np.ndarray) -> Ranks:
    """Average ranks (scipy.stats.rankdata's default, which Spearman's rho correlates), dense integer
    ranks (Kendall's tau-b depends only on order and ties, so it needs no more) and the sort order, from
    one sort: ranking once per metric instead of twice per metric pair is most of the report at 1M pairs.

    Worked example: v = [0.5, 0.2, 0.5, 0.9] -> average ranks [2.5, 1, 2.5, 4], dense ranks [2, 1, 2, 3].
    """
    order = np.argsort(v)  # tied values share a rank, so the unstable sort's order among them is irrelevant
    ordered = v[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]] if v.size else np.zeros(0, dtype=bool)
    dense_sorted = np.cumsum(new)
    starts = np.r_[np.flatnonzero(new), v.size]  # a tie group fills sorted places starts[d-1] .. starts[d]-1
    average = np.empty(v.size)
    average[order] = 0.5 * (starts[dense_sorted - 1] + starts[dense_sorted] + 1)
    dense = np.empty(v.size, dtype=np.intp)
    dense[order] = dense_sorted
    return Ranks(average, dense, order)


def _tie_pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64, copy=False)
    return int((counts * (counts - 1) // 2).sum())


def _kendall_tau_b(a: Ranks, b: Ranks) -> float:
    """Kendall's tau-b from dense ranks, with the formula of scipy.stats.kendalltau.

    scipy sorts both inputs again for every metric pair (two of its three steps at 1M pairs); here
    the rows are put in (a, b) order from a's sort, once per pair, and only the discordant-pair count
    is scipy's (its merge-sort counter, a private function: without it, the public kendalltau).
    """
    try:
        from scipy.stats._stats import _kendall_dis
    except ImportError:  # a scipy that moved it: the same number, slower
        from scipy import stats

        return float(stats.kendalltau(a.dense, b.dense).statistic)
    n = a.dense.size
    if a.dense[a.order[-1]] == n:  # no ties in a: its sort order is already the (a, b) order
        order = a.order
    elif a.dense[a.order[-1]] < 2**16:  # b's order, stably sorted by a: numpy radix-sorts 16-bit keys in O(n)
        order = b.order[np.argsort(a.dense[b.order].astype(np.uint16), kind="stable")]
    else:  # unique per (a, b) value pair, so an unstable sort gives the (a, b) order
        order = np.argsort(a.dense.astype(np.int64) * (int(b.dense.max()) + 1) + b.dense)
    x, y = a.dense[order], b.dense[order]
    discordant = int(_kendall_dis(x, y))
    boundary = np.r_[True, (x[1:] != x[:-1]) | (y[1:] != y[:-1]), True]
    joint_ties = _tie_pairs(np.diff(np.flatnonzero(boundary)))
    x_ties, y_ties = _tie_pairs(np.bincount(a.dense)), _tie_pairs(np.bincount(b.dense))
    total = n * (n - 1) // 2
    tau = (total - x_ties - y_ties + joint_ties - 2 * discordant) / np.sqrt(total - x_ties) / np.sqrt(total - y_ties)
    return float(min(1.0, max(-1.0, tau)))


def _rank_corr(a: Ranks, b: Ranks) -> tuple[float | None, float | None]:
    if a.dense.size < 2 or a.dense.max() == 1 or b.dense.max() == 1:
        return None, None  # undefined for a constant column; None instead of NaN
    rho = np.corrcoef(a.average, b.average)[0, 1]  # Pearson's r of the average ranks, as scipy.stats.spearmanr
    return float(rho), _kendall_tau_b(a, b)


def rank_correlations(scores: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Spearman rho and Kendall tau-b between every pair of metric score arrays (same candidates).

    None where a correlation is undefined (a constant score column). Each array is ranked once when
    it is finite throughout (compare_metrics' candidates always are), else per pair over the rows
    finite in both.
    """
    arrays = {name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}
    finite = {name: np.isfinite(v) for name, v in arrays.items()}
    whole = {name: _ranks(v) for name, v in arrays.items() if finite[name].all()}
    rows = []
    for a, b in combinations(arrays, 2):
        ok = finite[a] & finite[b]
        if a in whole and b in whole:
            ranks_a, ranks_b = whole[a], whole[b]
        else:
            ranks_a, ranks_b = _ranks(arrays[a][ok]), _ranks(arrays[b][ok])
        rho, tau = _rank_corr(ranks_a, ranks_b)
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


def label_contradictions(margins: pd.DataFrame, top: int = 50) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Pairs whose explicit margin is below 0 (CONTRADICTED_TITLE): the reward model or the dataset's own scores
    prefer the rejected answer, against the label. Most negative m_ex first, then most negative m_im (both
    margins against the label; a pair without m_im after those with one), then source order; with counts
    {"n": all such pairs, "both": those with m_im < 0 too}. The likeliest label noise: on the built-in demo
    these are exactly its flipped labels. A pair without m_ex is never listed (NaN < 0 is False)."""
    m_ex = margins["m_ex"].to_numpy(dtype=np.float64, na_value=np.nan)
    m_im = (margins["m_im"].to_numpy(dtype=np.float64, na_value=np.nan) if "m_im" in margins
            else np.full(len(margins), np.nan))
    pos = np.flatnonzero(m_ex < 0)
    im_key = np.where(np.isfinite(m_im[pos]), m_im[pos], np.inf)
    picked = pos[np.lexsort((pos, im_key, m_ex[pos]))][:top]
    preview = margins["prompt_preview"] if "prompt_preview" in margins else None
    rows = [{"rank": rank, "position": int(p), "pair_id": str(margins["pair_id"].iat[p]),
             "source_row": int(margins["source_row"].iat[p]) if "source_row" in margins else int(p),
             "m_ex": float(m_ex[p]), "m_im": float(m_im[p]) if np.isfinite(m_im[p]) else None,
             "prompt_preview": str(preview.iat[p]) if preview is not None else ""}
            for rank, p in enumerate(picked, start=1)]
    return rows, {"n": int(pos.size), "both": int((m_im[pos] < 0).sum())}


def _nothing_to_compare(margins: pd.DataFrame, values: dict[str, np.ndarray], names: tuple[str, ...]) -> str:
    """Why no pair can be compared, and the command(s) that score what is missing."""
    name = margins.attrs.get("dataset", "NAME")
    has_ex, has_im = np.isfinite(values["m_ex"]), np.isfinite(values["m_im"])
    text = [f"{name!r} has no pair with both an explicit and an implicit margin to compare: the explicit margin "
            f"(m_ex) is on {int(has_ex.sum()):,} of {len(margins):,} pairs, the implicit one (m_im) on "
            f"{int(has_im.sum()):,}."]
    sources = margin_sources(margins)
    if has_ex.any() and has_im.any() and not (has_ex & has_im).any():
        sample = covered_sample(margins, "m_ex")
        args = f" --sample {sample[0]} --seed {'SEED' if sample[1] is None else sample[1]}" if sample else ""
        text.append(f"They were scored on different pairs: `marginlens score {name}{args}` scores the implicit "
                    "margin on the explicit margin's pairs.")
    text += sources.notes
    text += [note for metric in names if (note := missing_note(margins, metric))]
    if runnable := [metric for metric in ("implicit", "random") if metric in sources.runnable]:
        text.append(f"What runs now: `marginlens select {name} --metric {runnable[0]} --out {name}-{runnable[0]}.jsonl`.")
    return " ".join(text)


def compare_metrics(
    margins: pd.DataFrame,
    ratio: float | None = None,
    count: int | None = None,
    params: MetricParams = DEFAULT_PARAMS,
    metrics: tuple[str, ...] | None = None,
    ex_split: float | None = None,
    im_split: float | None = None,
    im_axis: str = "abs",
    suspects: int = 20,  # rows of each list: the contradicted labels and the noise suspects
) -> CompareReport:
    """The whole contradiction report for `marginlens compare` and the dashboard.

    Every metric (default: every registered one the frame can run) is scored on the same candidate set:
    pairs having both margins and whatever other column a compared metric needs. Positions index frame rows.
    """
    # not every registered one: a rule needing a column the frame lacks (the DPO form of m_im, say) would
    # empty the shared candidate set
    names = margin_sources(margins).runnable if metrics is None else metrics
    chosen = [get_metric(name) for name in names]
    columns = list(dict.fromkeys(["m_ex", "m_im", *(c for metric in chosen for c in metric.needs)]))
    values = {c: margins[c].to_numpy(dtype=np.float64, na_value=np.nan) if c in margins else np.full(len(margins), np.nan)
              for c in columns}
    cand = np.flatnonzero(np.logical_and.reduce([np.isfinite(v) for v in values.values()]))
    if cand.size == 0:
        raise MarginLensError(_nothing_to_compare(margins, values, names))
    k = k_for(cand.size, ratio, count)
    contradicted, contradicted_counts = label_contradictions(margins, top=suspects)
    selected: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    for metric in chosen:
        result = metric.score({c: values[c][cand] for c in metric.needs}, params, n=int(cand.size))
        warnings += [w for w in result.warnings if w not in warnings]
        scores[metric.name] = result.scores
        top, short = top_k_eligible(result, k)
        warnings += [short] if short else []
        selected[metric.name] = cand[top]
    return CompareReport(
        n=int(cand.size),
        k=k,
        selected=selected,
        overlap=overlap_table(selected),
        correlations=rank_correlations(scores),
        quadrants=quadrant_labels(values["m_ex"], values["m_im"], ex_split, im_split, im_axis),
        suspects=noise_suspects(margins, top=suspects),
        warnings=warnings,
        contradicted=contradicted,
        contradicted_counts=contradicted_counts,
    )
