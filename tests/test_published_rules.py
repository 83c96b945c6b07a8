"""The published selection rules of core/selection/published_rules.py, each on numbers worked by hand, through
the margin frame, select(), compare, the CLI and Explore's controls."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers_data import make_dataset, save_logprobs, save_rewards
from marginlens.app.explore_view import ExploreControls, compute_view
from marginlens.core.cli import main
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.compare import compare_metrics
from marginlens.core.selection.margin_sources import margin_sources
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.metrics import MetricParams, get_metric, metric_names
from marginlens.core.selection.published_rules import at_most_share
from marginlens.core.selection.select import SelectionSpec, select

# Five pairs, the worked example of the RIP and threshold tests:
#   pair            0     1     2     3     4
#   r_rejected    4.0   2.0   5.0   1.0   3.0     (score_rejected)
#   m_ex          1.0   0.5   2.0  -1.0   0.5     (score_chosen - score_rejected)
#   rejected len   30    50    10    40    20     (characters)
R_REJECTED = [4.0, 2.0, 5.0, 1.0, 3.0]
M_EX = [1.0, 0.5, 2.0, -1.0, 0.5]
REJECTED_CHARS = [30, 50, 10, 40, 20]


def records() -> list[dict]:
    return [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "r" * n,
             "score_chosen": r + m, "score_rejected": r}
            for i, (r, m, n) in enumerate(zip(R_REJECTED, M_EX, REJECTED_CHARS, strict=True))]


@pytest.fixture
def five(ws, tmp_path):
    make_dataset(ws, "five", records(), tmp_path)
    return ws


def test_registry_order_paper_baselines_first():
    assert metric_names()[:7] == ("map", "explicit", "implicit", "random", "threshold", "rip", "dpo_gap")
    assert get_metric("threshold").uses == ("threshold", "seed")
    for name in ("threshold", "rip", "dpo_gap"):  # each names its paper where the UI and CLI show it
        assert any(s in get_metric(name).description for s in ("Rosset et al. 2024", "Yu et al. 2025", "Qi, Xu & Jin"))


def test_at_most_share_by_hand():
    # 4 <= {4, 2, 3}: 3/4; 2 <= {2}: 1/4; 5 <= all: 4/4; 3 <= {2, 3}: 2/4; ties share the larger rank
    assert at_most_share(np.array([4.0, 2.0, 5.0, 3.0])).tolist() == [0.75, 0.25, 1.0, 0.5]
    assert at_most_share(np.array([1.0, 1.0, 0.0])).tolist() == [1.0, 1.0, 1 / 3]


def test_frame_carries_the_rejected_reward(five):
    frame = load_margins(five, "five")
    assert frame["r_rejected"].tolist() == R_REJECTED and frame["m_ex"].tolist() == M_EX
    assert frame["rejected_chars"].tolist() == REJECTED_CHARS
    ids = list(frame["pair_id"])
    save_rewards(five, "five", "rm", ids, [10.0, 11, 12, 13, 14], [1.0, 2, 3, 4, 5])
    with_table = load_margins(five, "five", reward_fp="rm")  # the reward table's scale, like its m_ex
    assert with_table["r_rejected"].tolist() == [1.0, 2, 3, 4, 5] and with_table["m_ex"].tolist() == [9.0] * 5
    assert with_table["score_rejected"].tolist() == R_REJECTED  # existing columns unchanged


def test_rip_by_hand(five):
    # Pair 3 has m_ex < 0: the reward prefers its rejected answer, so RIP would not form it (score 0, never kept).
    # Over pairs 0, 1, 2, 4 (n = 4):
    #   u_rej = share of r_rejected <= own:  4 -> 3/4, 2 -> 1/4, 5 -> 4/4, 3 -> 2/4
    #   u_len = share of length <= own:     30 -> 3/4, 50 -> 4/4, 10 -> 1/4, 20 -> 2/4
    #   u_gap = share of m_ex >= own:      1.0 -> 2/4, .5 -> 4/4, 2.0 -> 1/4, .5 -> 4/4
    #   min                                  0.5       0.25      0.25      0.5
    frame = load_margins(five, "five")
    sel = select(frame, SelectionSpec(metric="rip", ratio=0.4))  # k = int(0.4 * 5) = 2
    assert sel.scores.tolist() == [0.5, 0.25, 0.25, 0.0, 0.5]
    assert sel.positions.tolist() == [4, 0]  # tied at 0.5: the larger index first (select's tie rule)
    assert not sel.warnings
    everything = select(frame, SelectionSpec(metric="rip", ratio=1.0))  # k = 5, but only 4 are RIP pairs
    assert everything.positions.tolist() == [4, 0, 2, 1]
    assert any("only 4 of 5 candidate pairs pass the 'rip' rule" in w and "m_ex >= 0" in w for w in everything.warnings)


def test_threshold_by_hand(five):
    frame = load_margins(five, "five")
    # tau = 0.5 keeps pairs 0, 1, 2, 4 (m_ex 1.0, 0.5, 2.0, 0.5), ranked by the random baseline's permutation
    passing = [0, 1, 2, 4]
    order = [int(i) for i in np.random.RandomState(7).permutation(5) if i in passing]  # seed 7's order of them
    two = select(frame, SelectionSpec(metric="threshold", ratio=0.4, threshold=0.5, seed=7))
    assert two.positions.tolist() == order[:2] and not two.warnings
    every = select(frame, SelectionSpec(metric="threshold", ratio=1.0, threshold=0.5, seed=7))
    assert every.positions.tolist() == order  # 4 pass, fewer than k = 5: exactly those, said once
    assert every.warnings == ["only 4 of 5 candidate pairs pass the 'threshold' rule (m_ex >= 0.5): selecting "
                              "those 4 instead of k = 5"]
    assert select(frame, SelectionSpec(metric="threshold", ratio=1.0, threshold=1.5)).positions.tolist() == [2]
    # with no bar it is the random baseline itself, for every k
    for ratio in (0.2, 0.6, 1.0):
        free = select(frame, SelectionSpec(metric="threshold", ratio=ratio, threshold=-np.inf, seed=7))
        assert free.positions.tolist() == select(frame, SelectionSpec(metric="random", ratio=ratio, seed=7)).positions.tolist()
    with pytest.raises(MarginLensError, match="threshold must be a number"):
        select(frame, SelectionSpec(metric="threshold", threshold=float("nan")))


def test_threshold_through_the_cli_and_explore(five, capsys):
    root = ["--workspace", str(five.root)]
    assert main(["select", "five", "--metric", "threshold", "--threshold", "1", "--ratio", "1.0", "--out", "t.jsonl",
                 "--with-metrics", *root]) == 0
    out = capsys.readouterr().out
    assert "warning: only 2 of 5 candidate pairs pass the 'threshold' rule (m_ex >= 1)" in out
    path = five.root / "exports" / "t.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["m_ex"] for r in rows) == [1.0, 2.0]  # pairs 0 and 2, nothing below tau
    manifest = json.loads((path.parent / "t.jsonl.manifest.json").read_text())
    assert manifest["selection"]["threshold"] == 1.0 and manifest["selection"]["metric"] == "threshold"

    frame = load_margins(five, "five")
    view = compute_view(frame, ExploreControls(metric="threshold", threshold=1.0, ratio=1.0))
    assert sorted(view.selection.positions.tolist()) == [0, 2]
    assert compute_view(frame, ExploreControls(metric="threshold", threshold=2.0, ratio=1.0)).selection.positions.tolist() == [2]


def dpo_workspace(ws, tmp_path):
    """Four pairs; policy and reference summed log-probs chosen so that with beta = 0.1 the DPO margins are
    0.1 * [(pol_c - ref_c) - (pol_r - ref_r)] = 0.1 * [(-8 + 10) - (-9 + 9), ...] = [0.2, -0.1, 0.0, 0.3]."""
    make_dataset(ws, "dpo", [{"prompt": f"Q{i}?", "chosen": f"c{i}", "rejected": f"r{i}",
                              "score_chosen": 1.0, "score_rejected": 0.0} for i in range(4)], tmp_path)
    ids = list(ws.load_pairs("dpo")["pair_id"])
    ones = np.ones(4)
    save_logprobs(ws, "dpo", "pol", ids, [-8.0, -10, -5, -4], ones, [-9.0, -9, -6, -7], ones)
    save_logprobs(ws, "dpo", "ref", ids, [-10.0, -10, -6, -6], ones, [-9.0, -10, -7, -6], ones)
    return ws


def test_dpo_gap_by_hand(ws, tmp_path):
    dpo_workspace(ws, tmp_path)
    frame = load_margins(ws, "dpo", policy_fp="pol", reference_fp="ref", beta=0.1)
    np.testing.assert_allclose(frame["m_im_dpo"], [0.2, -0.1, 0.0, 0.3])
    # mean 0.1, deviations [.1, -.2, -.1, .2], population variance 0.1 / 4 = 0.025, std = 0.1 * sqrt(2.5):
    # z = [1, -2, -1, 2] / sqrt(2.5); smallest first: score = -z
    sel = select(frame, SelectionSpec(metric="dpo_gap", ratio=0.5))  # k = 2
    np.testing.assert_allclose(sel.scores, np.array([-1.0, 2.0, 1.0, -2.0]) / np.sqrt(2.5))
    assert sel.positions.tolist() == [1, 2]  # the policy prefers pair 1's rejected answer: hardest first
    assert "dpo_gap" in margin_sources(frame).runnable
    report = compare_metrics(frame, ratio=0.5)
    assert report.selected["dpo_gap"].tolist() == [1, 2] and "dpo_gap" in report.selected


def test_dpo_gap_refuses_the_simpo_form(ws, tmp_path, capsys):
    dpo_workspace(ws, tmp_path)
    simpo = load_margins(ws, "dpo", policy_fp="pol")
    assert simpo.attrs["m_im_form"] == "simpo" and simpo["m_im_dpo"].isna().all()
    with pytest.raises(MarginLensError, match=r"needs the DPO-form implicit \(m_im_dpo\) margin.*"
                                              r"marginlens score dpo --reference MODEL.*--reference TABLE"):
        select(simpo, SelectionSpec(metric="dpo_gap"))
    sources = margin_sources(simpo)
    assert "dpo_gap" not in sources.runnable and {"threshold", "rip", "implicit"} <= set(sources.runnable)
    assert "dpo_gap" not in compare_metrics(simpo, ratio=0.5).selected  # the others still compare

    root = ["--workspace", str(ws.root), "--policy", "pol"]
    assert main(["select", "dpo", "--metric", "dpo_gap", "--out", "d.jsonl", *root]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert "--metric dpo_gap cannot run on 'dpo'" in err and "score a reference model" in err
    assert "`marginlens score dpo --reference MODEL`" in err
    assert main(["select", "dpo", "--metric", "dpo_gap", "--out", "d.jsonl", "--reference", "ref", "--beta", "0.1",
                 "--ratio", "0.5", *root]) == 0
    rows = (ws.root / "exports" / "d.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["chosen"] for r in rows) == ["c1", "c2"]


def test_a_frame_without_the_columns_still_runs_the_rest():
    frame = pd.DataFrame({"pair_id": ["a", "b", "c"], "m_ex": [1.0, 2.0, 3.0], "m_im": [0.1, 0.2, 0.3]})
    assert margin_sources(frame).runnable[:5] == ("map", "explicit", "implicit", "random", "threshold")
    with pytest.raises(MarginLensError, match="needs the r_rejected column"):
        select(frame, SelectionSpec(metric="rip"))
    assert get_metric("rip").score({"m_ex": np.array([1.0]), "r_rejected": np.array([0.0]),
                                    "rejected_chars": np.array([5.0])}, MetricParams()).scores.tolist() == [1.0]


def test_explore_page_threshold_control(tmp_path):
    from helpers_app import app_test, build_workspace, metrics, no_errors

    ws = build_workspace(tmp_path / "workspace", n=30)
    at = app_test("explore_page.py", ws)
    at.run()
    assert at.number_input(key="_ctl_threshold").disabled  # map reads no threshold
    at.selectbox(key="_ctl_metric").set_value("threshold").run()
    assert not at.number_input(key="_ctl_threshold").disabled
    at.number_input(key="_ctl_threshold").set_value(100.0).run()  # no score gap reaches 100
    no_errors(at)
    assert metrics(at)["Selected (top-k)"] == "0"
    shown = [w.value.replace("\\", "") for w in at.warning]  # markdown-escaped on the page
    assert any("only 0 of 31 candidate pairs pass the 'threshold' rule (m_ex >= 100)" in w for w in shown), shown
