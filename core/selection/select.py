"""Top-k selection over a margin frame, with the spec that every export manifest records.

Tie-breaking (matters only for pairs whose scores are exactly equal across the k-th place):
the reference implementation selects with `np.argsort(score)[-k:]`, numpy's default (unstable)
sort, so which of several tied pairs it keeps is an accident of the numpy build and CPU (on
AVX-512 machines numpy dispatches to a vectorised sort that orders ties differently from
insertion/intro sort). The deterministic reading of that expression is the *stable* sort,
`np.argsort(score, kind="stable")[-k:]`: among equal scores the pair with the larger original
index is selected first. MarginLens uses exactly that rule, so it agrees with the reference
whenever the reference's own result is well defined (no tie across the boundary, or a numpy
that happens to sort stably), and is reproducible everywhere else. Ranks are reported best
first: score descending, then original index descending.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.filters import Filter, filter_mask, resolve_filters
from marginlens.core.selection.margin_sources import margin_sources
from marginlens.core.selection.metrics import (
    DEFAULT_METRIC,
    DEFAULT_PARAMS,
    MARGIN_COLUMNS,
    MetricParams,
    MetricResult,
    get_metric,
)

DEFAULT_RATIO = 0.4
TIE_BREAK = "score desc, then original index desc (= np.argsort(score, kind='stable')[-k:])"
FILTER_STAGES = ("before", "after")


def k_for(n: int, ratio: float | None = None, count: int | None = None) -> int:
    """k = int(ratio * n) as the reference computes it, or an explicit count (capped at n)."""
    if ratio is not None and count is not None:
        raise MarginLensError("give either a ratio or a count, not both")
    if count is not None:
        if count < 0:
            raise MarginLensError(f"count must be >= 0, got {count}")
        return min(int(count), n)
    ratio = DEFAULT_RATIO if ratio is None else ratio
    if not 0 <= ratio <= 1:
        raise MarginLensError(f"ratio must be between 0 and 1, got {ratio}")
    return int(ratio * n)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores, best first, ties by larger position first (see module doc).

    Worked example, the 5 pairs of core.selection.metrics.zscore (repeated exactly by tests/test_metrics.py):
    M_AP scores [3.0, 0.5, 0.5, -1.0, -3.0], k = int(0.4 * 5) = 2. Pair 0 is first; pairs 1 and 2 tie
    for the second place.
      reference   np.argsort(score)[-2:]: numpy's default sort may order the tied 1 and 2 either way
                  (on this project's machine it returns [4 3 2 1 0], so the reference keeps {0, 1});
      MarginLens  np.argsort(score, kind="stable") = [4 3 1 2 0], last two [2 0]: the tie goes to the
                  larger index, so top_k returns [0, 2] (best first) on every machine.
    The explicit baseline z(m_ex) = [1.5, 0.5, 0, -0.5, -1.5] keeps [0, 1], the implicit one
    -z(|m_im|) = [1.5, 0, 0.5, -0.5, -1.5] keeps [0, 2]: no tie at the boundary, so every sort agrees.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    k = max(0, min(int(k), n))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        # O(n) partition to the k-th largest value, then a stable sort of only the contenders: the
        # whole tie group at the boundary is kept, so the stable rule decides it exactly.
        kth = np.partition(scores, n - k)[n - k]
        contenders = np.flatnonzero(scores >= kth)
    else:
        contenders = np.arange(n)
    order = _stable_argsort(scores[contenders])[::-1]
    return contenders[order[:k]].astype(np.int64)


def top_k_eligible(result: MetricResult, k: int) -> tuple[np.ndarray, str | None]:
    """top_k of a metric's scores among the candidates its rule keeps (all of them for most metrics), and the
    warning when fewer than k pass, which then are all selected."""
    if result.eligible is None:
        return top_k(result.scores, k), None
    pool = np.flatnonzero(result.eligible)
    warning = None
    if pool.size < k:
        warning = (f"only {pool.size:,} of {result.eligible.size:,} candidate pairs pass the {result.metric!r} rule "
                   f"({result.rule}): selecting those {pool.size:,} instead of k = {k:,}")
    return pool[top_k(result.scores[pool], k)], warning


def _stable_argsort(values: np.ndarray) -> np.ndarray:
    """np.argsort(values, kind="stable"): without ties every sort gives that order, and numpy's default
    sort is several times faster than its stable one, so the stable sort runs only when there is a tie."""
    order = np.argsort(values)
    ordered = values[order]
    if (ordered[1:] == ordered[:-1]).any():
        return np.argsort(values, kind="stable")
    return order


@dataclass
class SelectionSpec:
    """Everything that decides which pairs are selected; recorded verbatim in export manifests."""

    metric: str = DEFAULT_METRIC  # a name in the metric registry (core.selection.metrics)
    weight: float = DEFAULT_PARAMS.weight
    signed: bool = DEFAULT_PARAMS.signed
    ratio: float | None = None  # None with count None means DEFAULT_RATIO
    count: int | None = None
    seed: int = DEFAULT_PARAMS.seed
    filters: list[Filter] = field(default_factory=list)
    filter_stage: str = "before"  # "before": filters pick the candidate set; "after": they prune the top-k
    threshold: float = DEFAULT_PARAMS.threshold  # tau of the `threshold` rule (m_ex >= tau)

    @property
    def params(self) -> MetricParams:
        return MetricParams(self.weight, self.signed, self.seed, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["filters"] = [f.to_dict() for f in self.filters]
        if self.ratio is None and self.count is None:
            out["ratio"] = DEFAULT_RATIO
        out["tie_break"] = TIE_BREAK
        return out


@dataclass
class Selection:
    """The result of `select`. Positions index rows of the margin frame it was computed on."""

    spec: SelectionSpec
    positions: np.ndarray  # selected rows, best first
    pair_ids: list[str]
    scores: np.ndarray  # metric score per frame row; NaN for rows outside the candidate set
    n_total: int
    n_missing: int  # rows without the margins this metric needs (never candidates)
    n_candidates: int
    k: int
    warnings: list[str] = field(default_factory=list)
    n_scored: int | None = None  # pairs every score table holds (a sampled scoring); None: all n_total

    def counts(self) -> dict[str, int]:
        return {
            "total": self.n_total,
            "missing_margins": self.n_missing,
            "candidates": self.n_candidates,
            "k": self.k,
            "selected": int(self.positions.size),
            # only for a sampled scoring: manifests of whole-dataset selections stay as they were
            **({"scored": self.n_scored} if self.n_scored is not None and self.n_scored < self.n_total else {}),
        }

    def in_source_order(self) -> np.ndarray:
        """Selected positions sorted by frame row (exports use this order: stable, diff-friendly)."""
        return np.sort(self.positions)


def _missing_margin(margins: pd.DataFrame, metric: str, column: str) -> str:
    """What `metric` lacks and the command that scores it (the margin sources' notes name the sample to score)."""
    kind, hint = MARGIN_COLUMNS.get(column, (None, None))
    what = f"{kind} ({column}) margin" if kind else f"{column} column"
    name = margins.attrs.get("dataset", "this dataset")
    sources = margin_sources(margins)
    notes = [note for note in sources.notes if note.startswith("No explicit" if column == "m_ex" else "No implicit")]
    how = " ".join(notes) if column in ("m_ex", "m_im") and notes else (hint or "").replace("NAME", str(name))
    runs = f" Metrics that run now: {', '.join(sources.runnable)}." if sources.runnable else ""
    return f"metric {metric!r} needs the {what}, which {name!r} does not have. {how}".rstrip() + runs


def select(margins: pd.DataFrame, spec: SelectionSpec, texts: Any = None) -> Selection:
    """Score and select pairs of a margin frame (core.selection.margins.load_margins) according to `spec`.

    `texts` is the pair table (core.data.pairs.load_texts) and is only needed for text filters.
    Filters with stage "before" restrict the candidate set (z-scores and k are computed over it);
    with stage "after" the whole frame is ranked and the filters then prune the top-k.
    """
    metric = get_metric(spec.metric)
    if spec.filter_stage not in FILTER_STAGES:
        raise MarginLensError(f"filter stage must be 'before' or 'after', got {spec.filter_stage!r}")
    n_total = len(margins)
    filters = resolve_filters(margins, spec.filters)
    spec = replace(spec, filters=filters)
    warnings: list[str] = []

    # A sampled scoring covers part of the dataset: every metric (random too) picks from the scored part,
    # so the subsets it is compared with are drawn from the same pairs.
    have = margins["scored"].to_numpy(dtype=bool).copy() if "scored" in margins else np.ones(n_total, dtype=bool)
    n_scored = int(have.sum())
    needed: dict[str, np.ndarray] = {}
    for column in metric.needs:
        values = margins[column].to_numpy(dtype=np.float64, na_value=np.nan) if column in margins else None
        if values is None or np.isnan(values).all():
            raise MarginLensError(_missing_margin(margins, spec.metric, column))
        have &= np.isfinite(values)
        needed[column] = values
    n_missing = int((~have).sum())
    # Unscored pairs are the next warning's; counting them here too blamed the metric for the sample.
    if lacking := n_missing - (n_total - n_scored):
        warnings.append(f"{lacking:,} scored pairs lack the margins for {spec.metric!r} and are not candidates")
    if n_scored < n_total:
        warnings.append(f"{n_scored:,} of {n_total:,} pairs scored: selecting from the scored pairs")

    candidates = have.copy()
    if filters and spec.filter_stage == "before":
        candidates &= filter_mask(margins, filters, texts)
    cand_pos = np.flatnonzero(candidates)

    columns = {c: values[cand_pos] for c, values in needed.items()}
    result = metric.score(columns, spec.params, n=int(cand_pos.size))
    warnings += result.warnings
    k = k_for(cand_pos.size, spec.ratio, spec.count)
    if spec.count is not None and spec.count > cand_pos.size:
        warnings.append(f"count {spec.count:,} exceeds the {cand_pos.size:,} candidate pairs; selecting all")
    top, short = top_k_eligible(result, k)
    if short:
        warnings.append(short)
    chosen = cand_pos[top]
    if filters and spec.filter_stage == "after":
        keep = filter_mask(margins, filters, texts)
        chosen = chosen[keep[chosen]]

    scores = np.full(n_total, np.nan)
    scores[cand_pos] = result.scores
    # take before converting: a whole string column to Python objects costs ~0.3 s at 1M pairs
    pair_ids = margins["pair_id"].take(chosen).tolist() if "pair_id" in margins else []
    return Selection(spec, chosen, pair_ids, scores, n_total, n_missing, int(cand_pos.size), k, warnings,
                     n_scored)
