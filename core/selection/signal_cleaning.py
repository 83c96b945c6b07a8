"""Multi-signal cleaning, as benchmarked by PrefCleanBench (Yeh & Li 2025, "Clean First, Align Later: Benchmarking
Preference Data Cleaning for Reliable LLM Alignment", arXiv:2509.23564): a pair is flagged as mislabeled when at
least VOTES of three noise signals agree, and the flagged pairs are removed (`clean`) or trained on with chosen
and rejected exchanged (`clean_flip`, a lab arm). The signals, over the candidate set:

    reward     m_ex < 0                                the reward model prefers the rejected answer
    judge      judge_rejected == 1                     an audit's judge preferred it in both orders
                                                       (core.selection.judge_signal; unjudged pairs: no vote)
    implicit   m_im <= -std(m_im)                      the policy prefers it by at least one spread of m_im

Worked by hand in tests/test_rules_cleaning.py; what is approximated: docs/RULES.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from marginlens.core.selection.judge_signal import JUDGE_COLUMN
from marginlens.core.selection.metric_base import (
    MarginInputs,
    Metric,
    MetricParams,
    get_metric,
    random_scores,
    register,
)

VOTES = 2  # of the three signals: a majority, as PrefCleanBench's majority vote over its detectors
SIGNALS = "m_ex < 0, judge prefers rejected in both orders, m_im <= -std(m_im)"


def signal_votes(x: MarginInputs) -> np.ndarray:
    """How many of the three signals flag each candidate (0 to 3); records one line of counts as a warning."""
    m_ex, m_im, judge = x["m_ex"], x["m_im"], x[JUDGE_COLUMN]
    spread = float(m_im.std()) if x.n else 0.0
    reward = m_ex < 0
    judged = judge >= 0.5
    implicit = m_im <= -spread if spread > 0 else np.zeros(x.n, dtype=bool)  # constant m_im: no preference
    votes = reward.astype(np.int64) + judged + implicit
    x.warnings.append(f"noise signals over {x.n} candidates: m_ex < 0 on {int(reward.sum())}, judge against the "
                      f"label on {int(judged.sum())}, m_im <= -{spread:.3g} on {int(implicit.sum())}; "
                      f"{int((votes >= VOTES).sum())} flagged by at least {VOTES}")
    return votes


@register
class SignalCleaning(Metric):
    """Remove: the pairs flagged by fewer than VOTES signals are eligible, in the random baseline's seeded order
    (so --ratio 1 keeps every unflagged pair, and a smaller ratio is a uniform sample of them)."""

    name = "clean"
    needs = ("m_ex", "m_im", JUDGE_COLUMN)
    uses = ("seed",)
    label = "cleaning: remove pairs 2 of 3 signals flag"
    description = ("multi-signal cleaning (PrefCleanBench, Yeh & Li 2025): drop a pair when 2 of {m_ex < 0, judge "
                   "prefers rejected in both orders, m_im <= -std} agree; a seeded sample of the rest")

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        return random_scores(x.n, p.seed)

    def eligible(self, x: MarginInputs, p: MetricParams) -> tuple[np.ndarray, str]:
        return signal_votes(x) < VOTES, f"fewer than {VOTES} of: {SIGNALS}"


@register
class SignalCleaningFlip(SignalCleaning):
    """Flip: every candidate is eligible, in the random baseline's order (at one seed it selects what `random`
    selects), and the lab trains on the flagged ones with chosen and rejected exchanged."""

    name = "clean_flip"
    label = "cleaning: flip pairs 2 of 3 signals flag (lab)"
    description = ("multi-signal cleaning, flip arm: the random baseline's sample, and the lab trains the pairs 2 of "
                   "{m_ex < 0, judge against the label, m_im <= -std} flag with chosen and rejected swapped")

    def eligible(self, x: MarginInputs, p: MetricParams) -> tuple[np.ndarray, str] | None:
        return None  # the parent's filter undone: flagged pairs stay, to be trained swapped

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        flagged = int((signal_votes(x) >= VOTES).sum())
        x.warnings.append(f"clean_flip: the lab trains the {flagged:,} flagged candidates swapped; an export of this "
                          "selection writes them as labeled")
        return random_scores(x.n, p.seed)

    def swapped(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        return signal_votes(x) >= VOTES


def flip_mask(margins: pd.DataFrame, selection: Any) -> np.ndarray | None:
    """Per record of the selection's export (pair-table order: `selection.in_source_order()`), whether its rule
    swaps it; None for a rule that swaps nothing. `selection` is core.selection.select.Selection on `margins`:
    its candidates are the rows with a finite score, so the signals are recomputed over exactly that set."""
    metric = get_metric(selection.spec.metric)
    candidates = np.flatnonzero(np.isfinite(selection.scores))
    columns = {c: margins[c].to_numpy(dtype=np.float64, na_value=np.nan)[candidates] for c in metric.needs}
    swapped = metric.swapped_among(columns, selection.spec.params)
    if swapped is None:
        return None
    return np.isin(selection.in_source_order(), candidates[swapped])
