"""Audit statistics: pure functions of verdicts, no I/O (core.audit.audit_report assembles them into reports).

Per subset, over its sampled pairs (each judged in both orders):
  agreement        among decisive pairs (both orders valid and naming the same response): the share
                   where the judge prefers the dataset's chosen response; Wilson 95% interval
  kappa            Cohen's kappa between the label's position (A in order AB, B in order BA) and the
                   judge's answer, over all valid single judgments. Each pair is judged in both orders,
                   so the label sits in A and in B equally often and chance agreement is exactly 1/2
                   whatever the judge's position bias: kappa = 2 x (share of single judgments naming
                   the chosen response) - 1. Only invalid answers unbalance the positions and move it
                   off that line. Position bias shows in position_consistency, not here.
  position_consistency   share of pairs with both orders valid whose two answers name the same response
  invalid          single judgments whose answer could not be parsed
"""

from __future__ import annotations

import math
from typing import Any

from marginlens.core.verdicts import PairVerdict

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; None when n == 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when undefined (no items, or
    chance agreement is 1 because both raters used one and the same label throughout)."""
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    expected = sum((a.count(c) / n) * (b.count(c) / n) for c in labels)
    if expected >= 1:
        return None
    return (observed - expected) / (1 - expected)


def subset_stats(pair_ids: list[str], verdicts: dict[str, PairVerdict]) -> dict[str, Any]:
    """The audit statistics of one subset (see the module docstring for the definitions)."""
    judged = [verdicts[pid] for pid in pair_ids if pid in verdicts]
    complete = [v for v in judged if v.complete]
    valid = [v for v in complete if v.valid]
    decisive = [v for v in valid if v.consistent]
    agree = sum(1 for v in decisive if v.agrees)
    label_positions: list[str] = []
    judge_answers: list[str] = []
    for verdict in judged:
        for record in (verdict.ab, verdict.ba):
            if record is not None and record["valid"]:
                label_positions.append(record["chosen_position"])
                judge_answers.append(record["choice"])
    interval = wilson_interval(agree, len(decisive))
    return {
        "n": len(pair_ids),
        "judged": len(complete),
        "pending": len(pair_ids) - len(complete),
        "valid_pairs": len(valid),
        "decisive": len(decisive),
        "agree": agree,
        "agreement": agree / len(decisive) if decisive else None,
        "ci_low": interval[0] if interval else None,
        "ci_high": interval[1] if interval else None,
        "kappa": cohen_kappa(label_positions, judge_answers),
        "consistent": len(decisive),
        "position_consistency": len(decisive) / len(valid) if valid else None,
        "invalid": sum(v.invalid for v in judged),
        "invalid_pairs": sum(1 for v in judged if v.invalid),
    }

