"""Margins from score tables and the metric formulas of docs/METRIC.md."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_data import (
    hh_records,
    make_dataset,
    random_logprobs,
    save_logprobs,
    save_rewards,
    standard_records,
)
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.margins import load_margins, pair_texts
from marginlens.core.selection.metrics import metric_scores, zscore
from marginlens.core.selection.select import SelectionSpec, select


@pytest.fixture
def ws_std(tmp_path):
    from marginlens.core.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    make_dataset(ws, "std", standard_records(30), tmp_path)
    return ws


def test_zscore_population_std():
    v = np.array([1.0, 2.0, 3.0, 6.0])
    z, warning = zscore(v)
    assert warning is None
    np.testing.assert_allclose(z, (v - v.mean()) / np.sqrt(((v - v.mean()) ** 2).mean()))
    z, warning = zscore(np.full(5, 3.0), "m_ex")
    assert np.all(z == 0) and "constant" in warning
    with pytest.raises(MarginLensError, match="non-finite"):
        zscore(np.array([1.0, np.nan]), "m_ex")


def test_metric_formulas():
    m_ex = np.array([1.0, 4.0, 2.0, 0.5])
    m_im = np.array([-3.0, 1.0, 0.5, 2.0])
    zx = (m_ex - m_ex.mean()) / m_ex.std()
    a = np.abs(m_im)
    za = (a - a.mean()) / a.std()
    zs = (m_im - m_im.mean()) / m_im.std()
    np.testing.assert_allclose(metric_scores(m_ex, m_im, "map").scores, zx - za)
    np.testing.assert_allclose(metric_scores(m_ex, m_im, "map", weight=2.5).scores, zx - 2.5 * za)
    np.testing.assert_allclose(metric_scores(m_ex, m_im, "map", signed=True).scores, zx - zs)
    np.testing.assert_allclose(metric_scores(m_ex, m_im, "explicit").scores, zx)
    np.testing.assert_allclose(metric_scores(m_ex, m_im, "implicit").scores, -za)
    np.testing.assert_allclose(metric_scores(m_ex, m_im, "implicit", signed=True).scores, -zs)
    with pytest.raises(MarginLensError, match="unknown metric"):
        metric_scores(m_ex, m_im, "bogus")
    with pytest.raises(MarginLensError, match="implicit margin"):
        metric_scores(m_ex, None, "map")


def test_simpo_margin_from_logprob_table(ws_std):
    arrays = random_logprobs(ws_std, "std", "pol")
    frame = load_margins(ws_std, "std", policy_fp="pol")
    expected = arrays["chosen_logp"] / arrays["chosen_ntok"] - arrays["rejected_logp"] / arrays["rejected_ntok"]
    np.testing.assert_allclose(frame["m_im"].to_numpy(), expected)
    np.testing.assert_allclose(frame["m_ex"], frame["score_chosen"] - frame["score_rejected"])
    assert frame.attrs["m_im_form"] == "simpo" and frame.attrs["policy_fp"] == "pol"
    assert frame["prompt_preview"].iloc[3] == "Question 3: what is 3 plus 3?"
    assert (frame["chosen_chars"] == [len(f"It is {2 * i}.") for i in range(30)]).all()


def test_dpo_margin_with_reference_and_reward_table(ws_std):
    pol = random_logprobs(ws_std, "std", "pol", seed=1)
    ref = random_logprobs(ws_std, "std", "ref", seed=2)
    ids = list(ws_std.load_pairs("std")["pair_id"])
    rng = np.random.default_rng(5)
    rc, rr = rng.normal(size=30), rng.normal(size=30)
    save_rewards(ws_std, "std", "rm", ids, rc, rr)
    frame = load_margins(ws_std, "std", policy_fp="pol", reference_fp="ref", reward_fp="rm", beta=0.2)
    expected = 0.2 * ((pol["chosen_logp"] - ref["chosen_logp"]) - (pol["rejected_logp"] - ref["rejected_logp"]))
    np.testing.assert_allclose(frame["m_im"].to_numpy(), expected)
    np.testing.assert_allclose(frame["m_ex"].to_numpy(), rc - rr)
    assert frame.attrs["m_im_form"] == "dpo" and frame.attrs["m_ex_source"] == "reward:rm"
    # DPO form is identically 0 when policy == reference
    same = load_margins(ws_std, "std", policy_fp="pol", reference_fp="pol")
    assert (same["m_im"] == 0).all()


def test_join_is_by_pair_id_and_partial_tables_leave_missing(ws_std):
    ids = list(ws_std.load_pairs("std")["pair_id"])
    # reversed order and only 20 of 30 pairs scored
    sub = ids[::-1][:20]
    save_logprobs(ws_std, "std", "part", sub, [-1.0] * 20, [1] * 20, [-2.0] * 20, [2] * 20)
    logp = {pid: -float(i) for i, pid in enumerate(sub)}
    save_logprobs(ws_std, "std", "part2", sub, [logp[p] for p in sub], [1] * 20, [0.0] * 20, [1] * 20)
    frame = load_margins(ws_std, "std", policy_fp="part2")
    for pid, m in zip(frame["pair_id"], frame["m_im"], strict=True):
        assert (np.isnan(m) and pid not in logp) or m == logp[pid]
    sel = select(frame, SelectionSpec(metric="map"))
    assert sel.n_missing == 10 and sel.n_candidates == 20 and sel.k == 8
    # the 10 unscored pairs are the sample's to report, not a margin the metric lacks
    assert sel.warnings == ["20 of 30 pairs scored: selecting from the scored pairs"]
    assert np.isnan(sel.scores[frame["m_im"].isna().to_numpy()]).all()


def test_clear_errors(ws_std, tmp_path):
    with pytest.raises(MarginLensError, match="no finished logprob score table 'nope' for dataset 'std'"):
        load_margins(ws_std, "std", policy_fp="nope")
    save_rewards(ws_std, "std", "rm", list(ws_std.load_pairs("std")["pair_id"]), [0.0] * 30, [0.0] * 30)
    with pytest.raises(MarginLensError, match="is a reward table"):
        load_margins(ws_std, "std", policy_fp="rm")
    with pytest.raises(MarginLensError, match="no dataset named 'missing'"):
        load_margins(ws_std, "missing")
    frame = load_margins(ws_std, "std")
    with pytest.raises(MarginLensError, match="implicit \\(m_im\\) margin, which 'std' does not have"):
        select(frame, SelectionSpec(metric="map"))
    make_dataset(ws_std, "hh", hh_records(5), tmp_path)
    with pytest.raises(MarginLensError, match="explicit \\(m_ex\\) margin, which 'hh' does not have"):
        select(load_margins(ws_std, "hh"), SelectionSpec(metric="explicit"))


def test_pair_texts_for_a_few_ids(ws_std):
    frame = load_margins(ws_std, "std")
    wanted = [frame["pair_id"].iloc[7], frame["pair_id"].iloc[2], "unknown"]
    rows = pair_texts(ws_std, "std", wanted)
    assert [r["pair_id"] for r in rows] == wanted[:2]
    assert rows[0]["chosen"] == "It is 14." and rows[0]["prompt"][0]["content"].startswith("Question 7")


def test_worked_example_of_the_docstrings():
    """The 5-pair example written out in core.selection.metrics.zscore and core.selection.select.top_k."""
    from marginlens.core.selection.select import k_for, top_k

    m_ex = np.array([6.0, 4.0, 3.0, 2.0, 0.0])
    m_im = np.array([0.0, -1.5, 1.0, 2.0, -3.0])
    assert (m_ex.mean(), m_ex.std(), np.abs(m_im).mean(), np.abs(m_im).std()) == (3.0, 2.0, 1.5, 1.0)
    z_ex, _ = zscore(m_ex, "m_ex")
    z_im, _ = zscore(np.abs(m_im), "|m_im|")
    assert z_ex.tolist() == [1.5, 0.5, 0.0, -0.5, -1.5]  # exact: these are binary fractions
    assert z_im.tolist() == [-1.5, 0.0, -0.5, 0.5, 1.5]
    score = metric_scores(m_ex, m_im, "map").scores
    assert score.tolist() == [3.0, 0.5, 0.5, -1.0, -3.0]  # pairs 1 and 2 tie exactly
    k = k_for(5, ratio=0.4)
    assert k == 2
    assert np.argsort(score, kind="stable").tolist() == [4, 3, 1, 2, 0]
    assert top_k(score, k).tolist() == [0, 2]  # the tie goes to the larger index
    sel = select(pd.DataFrame({"pair_id": [f"p{i}" for i in range(5)], "m_ex": m_ex, "m_im": m_im}),
                 SelectionSpec(metric="map", ratio=0.4))
    assert sel.positions.tolist() == [0, 2] and sel.pair_ids == ["p0", "p2"]
    assert metric_scores(m_ex, m_im, "explicit").scores.tolist() == [1.5, 0.5, 0.0, -0.5, -1.5]
    assert top_k(metric_scores(m_ex, m_im, "explicit").scores, k).tolist() == [0, 1]
    assert metric_scores(m_ex, m_im, "implicit").scores.tolist() == [1.5, -0.0, 0.5, -0.5, -1.5]
    assert top_k(metric_scores(m_ex, m_im, "implicit").scores, k).tolist() == [0, 2]
