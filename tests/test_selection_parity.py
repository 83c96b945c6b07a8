"""Selection must pick exactly the index set of the paper's reference implementation (docs/METRIC.md).

The reference (Hesse73/Alignment-Potential-Metric, metric_selection.py) z-scores with numpy's
population std and keeps `np.argsort(score)[-k:]`; its random baseline is
`np.random.seed(42); np.random.choice(N, k, replace=False)`. It is re-written here plainly, with the
stable sort that MarginLens documents as its tie rule.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from marginlens.core.selection.metrics import metric_scores
from marginlens.core.selection.select import SelectionSpec, k_for, select, top_k


def reference_select(rm_margin, logp_margin, metric, ratio=0.4, weight=1.0, seed=42, stable=True):
    rm = np.array(rm_margin, dtype=float)
    logp_abs = np.abs(np.array(logp_margin, dtype=float))
    k = int(ratio * len(rm))
    if metric == "random":
        np.random.seed(seed)
        return set(np.random.choice(len(rm), k, replace=False).tolist())
    rm_z = (rm - rm.mean()) / rm.std()
    logp_z = (logp_abs - logp_abs.mean()) / logp_abs.std()
    if metric == "map":
        score = rm_z - weight * logp_z
    elif metric == "explicit":
        score = rm_z
    else:
        score = -logp_z
    order = np.argsort(score, kind="stable") if stable else np.argsort(score)
    return set(order[-k:].tolist()) if k else set()


def frame(m_ex, m_im) -> pd.DataFrame:
    n = len(m_ex)
    return pd.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "m_ex": m_ex, "m_im": m_im})


def ours(m_ex, m_im, metric, ratio=0.4, weight=1.0, seed=42) -> set[int]:
    sel = select(frame(m_ex, m_im), SelectionSpec(metric=metric, ratio=ratio, weight=weight, seed=seed))
    assert not np.isnan(sel.scores).any()
    return set(sel.positions.tolist())


METRICS = ["map", "explicit", "implicit", "random"]


@pytest.mark.parametrize("metric", METRICS)
def test_hand_made_margins(metric):
    m_ex = [3.0, 0.5, 2.0, -1.0, 4.0, 1.5, 0.0, 2.5, 1.0, 3.5]
    m_im = [0.1, -2.0, 1.5, 0.3, -0.2, 0.05, 2.5, -0.7, 0.9, 3.0]
    assert ours(m_ex, m_im, metric) == reference_select(m_ex, m_im, metric)
    assert len(ours(m_ex, m_im, metric)) == 4


def test_hand_made_expected_map_set():
    # worked by hand: high m_ex and small |m_im| win
    m_ex = [10.0, 10.0, 0.0, 0.0, 5.0]
    m_im = [0.0, 5.0, 0.0, 5.0, 0.0]
    assert ours(m_ex, m_im, "map", ratio=0.4) == {0, 4}


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,ratio,weight", [(1000, 0.4, 1.0), (997, 0.25, 2.5), (50, 0.1, 0.5), (3, 0.5, 1.0)])
def test_random_margins_match_reference_exactly(metric, seed, n, ratio, weight):
    rng = np.random.default_rng(seed)
    m_ex, m_im = rng.normal(1, 2, n), rng.normal(0, 1.5, n)
    expected = reference_select(m_ex, m_im, metric, ratio, weight, seed=42)
    assert ours(m_ex, m_im, metric, ratio, weight) == expected
    if metric != "random":  # no ties: the literal (unstable) reference gives the same set
        assert expected == reference_select(m_ex, m_im, metric, ratio, weight, stable=False)


@pytest.mark.parametrize("metric", ["map", "explicit", "implicit"])
@pytest.mark.parametrize("seed", range(5))
def test_heavy_ties_match_stable_reference(metric, seed):
    rng = np.random.default_rng(seed)
    n = 503
    m_ex = rng.integers(0, 4, n).astype(float)
    m_im = rng.integers(-2, 3, n).astype(float)
    got = ours(m_ex, m_im, metric)
    assert got == reference_select(m_ex, m_im, metric)
    # whatever order the unstable reference takes, it agrees outside the tied boundary group
    literal = reference_select(m_ex, m_im, metric, stable=False)
    assert len(literal) == len(got)
    score = metric_scores(m_ex, m_im, metric).scores
    kth = np.sort(score)[-len(got)]
    assert {i for i in got if score[i] > kth} == {i for i in literal if score[i] > kth}


def test_tie_rule_prefers_larger_index():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 0.0, 2.0])
    assert top_k(scores, 2).tolist() == [5, 3]
    assert top_k(scores, 5).tolist() == [5, 3, 2, 1, 0]
    assert set(top_k(scores, 2).tolist()) == set(np.argsort(scores, kind="stable")[-2:].tolist())


def test_random_baseline_is_the_reference_sample_and_seeded():
    m_ex = np.arange(200.0)
    for seed in (42, 7):
        np.random.seed(seed)
        expected = set(np.random.choice(200, 80, replace=False).tolist())
        assert ours(m_ex, m_ex, "random", seed=seed) == expected
    assert ours(m_ex, m_ex, "random", seed=1) != ours(m_ex, m_ex, "random", seed=2)


def test_constant_column_falls_back_to_zero_zscore_with_warning():
    rng = np.random.default_rng(3)
    m_im = rng.normal(size=40)
    m_ex = np.full(40, 2.0)
    sel = select(frame(m_ex, m_im), SelectionSpec(metric="map"))
    assert np.isfinite(sel.scores).all()
    assert any("m_ex is constant" in w for w in sel.warnings)
    # z(m_ex) == 0, so M_AP ranks exactly like the implicit baseline
    assert set(sel.positions.tolist()) == ours(m_ex, m_im, "implicit")
    explicit = select(frame(m_ex, m_im), SelectionSpec(metric="explicit"))
    assert np.all(explicit.scores == 0) and len(explicit.positions) == 16
    assert set(explicit.positions.tolist()) == set(range(24, 40))  # all tied: stable rule, larger index first


def test_count_and_k():
    assert k_for(10) == 4 and k_for(10, ratio=0.25) == 2 and k_for(3, ratio=0.4) == 1
    assert k_for(10, count=7) == 7 and k_for(10, count=70) == 10
    m = np.arange(20.0)
    sel = select(frame(m, m), SelectionSpec(metric="explicit", count=5))
    assert set(sel.positions.tolist()) == set(range(15, 20))
    assert sel.positions.tolist() == [19, 18, 17, 16, 15]  # best first
