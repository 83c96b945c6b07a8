"""Quadrants, top-k overlap, rank correlations, contradicted labels and noise suspects."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers_data import make_dataset, random_logprobs, standard_records
from marginlens.core.cli import main
from marginlens.core.selection.compare import (
    CONTRADICTED_TITLE,
    SUSPECTS_TITLE,
    compare_metrics,
    label_contradictions,
    noise_suspects,
    overlap_table,
    rank_correlations,
)
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.quadrants import quadrant_labels
from scipy import stats


def test_quadrants_at_medians_and_thresholds():
    m_ex = np.array([5.0, 5.0, 0.0, 0.0, 2.0])
    m_im = np.array([0.1, -4.0, 0.1, 3.0, 1.0])
    q = quadrant_labels(m_ex, m_im)
    assert (q.ex_split, q.im_split) == (2.0, 1.0)
    assert q.labels.tolist() == ["high_potential", "policy_decided", "ambiguous", "model_confident", "ambiguous"]
    counts = {c["quadrant"]: c for c in q.counts}
    assert counts["policy_decided"]["n"] == 1 and counts["policy_decided"]["n_negative_im"] == 1
    assert sum(c["n"] for c in q.counts) == 5
    q = quadrant_labels(m_ex, m_im, ex_split=-1.0, im_split=0.0, im_axis="signed")
    assert q.labels.tolist() == ["policy_decided", "high_potential", "policy_decided", "policy_decided",
                                 "policy_decided"]
    q = quadrant_labels(np.array([1.0, np.nan]), np.array([1.0, 1.0]))
    assert q.labels.tolist()[1] == ""


def test_overlap_table():
    rows = overlap_table({"a": np.array([1, 2, 3, 4]), "b": np.array([3, 4, 5, 6]), "c": np.array([1, 2, 3, 4])})
    by = {(r["metric_a"], r["metric_b"]): r for r in rows}
    assert by[("a", "b")]["intersection"] == 2 and by[("a", "b")]["jaccard"] == pytest.approx(2 / 6)
    assert by[("a", "c")]["jaccard"] == 1.0 and len(rows) == 3


def test_rank_correlations_match_scipy_and_handle_constant():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    row = rank_correlations({"a": a, "b": b, "c": np.zeros(50)})
    assert row[0]["spearman"] == pytest.approx(stats.spearmanr(a, b).statistic)
    assert row[0]["kendall"] == pytest.approx(stats.kendalltau(a, b).statistic)
    assert row[1]["spearman"] is None and row[1]["kendall"] is None


def test_noise_suspects_rank_large_explicit_negative_implicit():
    df = pd.DataFrame({"pair_id": list("abcdef"), "source_row": range(6),
                       "m_ex": [9.0, 8.0, 9.0, 0.0, 1.0, 7.0], "m_im": [-5.0, -1.0, 2.0, -9.0, 0.0, -0.5],
                       "prompt_preview": list("ABCDEF")})
    assert [s["pair_id"] for s in noise_suspects(df)] == ["a", "b"]  # above the median m_ex (7.5)
    out = noise_suspects(df, ex_split=5.0)
    assert [s["pair_id"] for s in out] == ["a", "b", "f"]  # d has a low m_ex, c a positive m_im
    assert out[0]["rank"] == 1 and out[0]["prompt_preview"] == "A"
    assert out[0]["suspicion"] > out[1]["suspicion"] > out[2]["suspicion"]


def test_compare_metrics_report():
    rng = np.random.default_rng(1)
    n = 200
    df = pd.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "source_row": range(n),
                       "m_ex": rng.normal(size=n), "m_im": rng.normal(size=n)})
    df.loc[5, "m_im"] = np.nan
    report = compare_metrics(df, ratio=0.4)
    assert report.n == 199 and report.k == 79
    # every metric the frame runs: the paper's four, threshold, bees and selective_dpo (rip and chosen_reward need
    # r_rejected, dpo_gap the DPO form, the cleaning rules the judge column)
    assert set(report.selected) == {"map", "explicit", "implicit", "random", "threshold", "bees", "selective_dpo"}
    assert all(len(v) == 79 and 5 not in v for v in report.selected.values())
    assert len(report.overlap) == 21 and len(report.correlations) == 21  # 7 choose 2
    explicit_vs_map = next(r for r in report.correlations if {r["metric_a"], r["metric_b"]} == {"map", "explicit"})
    assert explicit_vs_map["spearman"] > 0.3  # M_AP contains z(m_ex)


def test_ranks_worked_example_and_correlations_with_ties_match_scipy():
    from marginlens.core.selection.compare import _ranks

    ranks = _ranks(np.array([0.5, 0.2, 0.5, 0.9]))
    assert ranks.average.tolist() == [2.5, 1.0, 2.5, 4.0] and ranks.dense.tolist() == [2, 1, 2, 3]
    rng = np.random.default_rng(2)
    a = np.round(rng.normal(size=3000), 1)  # many ties: the 16-bit radix path
    b = np.round(a + rng.normal(size=3000), 2)
    c = rng.normal(size=3000)  # no ties
    rows = {(r["metric_a"], r["metric_b"]): r for r in rank_correlations({"a": a, "b": b, "c": c})}
    for x, y, name in ((a, b, ("a", "b")), (a, c, ("a", "c")), (b, c, ("b", "c"))):
        assert rows[name]["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert rows[name]["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    finite = a.copy()
    finite[::7] = np.nan  # ranked per pair over the rows finite in both
    row = rank_correlations({"f": finite, "b": b})[0]
    ok = np.isfinite(finite)
    assert row["n"] == ok.sum()
    assert row["kendall"] == pytest.approx(stats.kendalltau(finite[ok], b[ok]).statistic, abs=1e-12)


def test_label_contradictions_most_negative_explicit_first():
    df = pd.DataFrame({"pair_id": list("abcdef"), "source_row": [10, 11, 12, 13, 14, 15],
                       "m_ex": [-1.0, 2.0, -3.0, -1.0, np.nan, -1.0], "m_im": [0.5, -1.0, 1.0, -2.0, -5.0, np.nan],
                       "prompt_preview": list("ABCDEF")})
    rows, counts = label_contradictions(df)
    # c has the most negative m_ex; among the m_ex = -1 ties, the more negative m_im first, no m_im last
    assert [r["pair_id"] for r in rows] == ["c", "d", "a", "f"] and [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["source_row"] == 12 and rows[0]["prompt_preview"] == "C" and rows[3]["m_im"] is None
    assert counts == {"n": 4, "both": 1}  # e has no m_ex: never listed
    assert [r["pair_id"] for r in label_contradictions(df, top=2)[0]] == ["c", "d"]


def test_cli_compare_prints_both_lists_with_the_dashboards_names(ws, tmp_path, capsys):
    make_dataset(ws, "std", standard_records(40), tmp_path)
    random_logprobs(ws, "std")
    margins = load_margins(ws, "std", policy_fp="pol")
    expected, counts = label_contradictions(margins, top=5)
    assert counts["n"] > 0  # the data has labels its own scores contradict
    assert main(["compare", "std", "--workspace", str(ws.root), "--suspects", "5"]) == 0
    out = capsys.readouterr().out
    assert "noise suspects" not in out
    first, second = out.index(CONTRADICTED_TITLE), out.index(SUSPECTS_TITLE)
    assert first < second and f"{counts['n']:,} pairs, {counts['both']:,} of them with m_im < 0 too" in out
    listed = out[first:second]
    assert all(f"{r['m_ex']:.3f}" in listed for r in expected) and len(listed.strip().splitlines()) == 2 + len(expected)
    assert main(["compare", "std", "--workspace", str(ws.root), "--suspects", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["pair_id"] for r in report["contradicted"]] == [r["pair_id"] for r in expected]
    assert report["contradicted_counts"] == counts
