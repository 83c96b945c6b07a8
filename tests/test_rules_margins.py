"""Less is More (bees), Selective DPO (selective_dpo) and the chosen answer's quality (chosen_reward), each on five
pairs worked by hand, through the real margin frame, select(), the select CLI, Explore's view and the audit's
subsets (docs/RULES.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers_data import make_dataset, save_logprobs
from marginlens.app.explore_view import ExploreControls, compute_view
from marginlens.core.audit.subsets import build_subsets
from marginlens.core.cli import main
from marginlens.core.selection.margin_sources import margin_sources
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.metrics import get_metric, metric_names
from marginlens.core.selection.select import SelectionSpec, select

# Five pairs:
#   pair            0     1     2     3     4
#   r_chosen        3     5     1    -1     2    (score_chosen)   mean 2, deviations 1 3 -1 -3 0: std 2
#   r_rejected      0     4     1     0     5    (score_rejected)
#   m_ex            3     1     0    -1    -3    r_chosen - r_rejected: mean 0, squares 9 1 0 1 9: std 2
#   m_im         -1.5   1.5   0.5   0.0  -0.5    policy table, SimPO form (one token each): mean 0, std 1
R_CHOSEN = [3.0, 5.0, 1.0, -1.0, 2.0]
R_REJECTED = [0.0, 4.0, 1.0, 0.0, 5.0]
M_IM = [-1.5, 1.5, 0.5, 0.0, -0.5]


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


@pytest.fixture
def five(ws, tmp_path):
    make_dataset(ws, "five", [{"prompt": f"Question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}",
                               "score_chosen": c, "score_rejected": r}
                              for i, (c, r) in enumerate(zip(R_CHOSEN, R_REJECTED, strict=True))], tmp_path)
    ids = list(ws.load_pairs("five")["pair_id"])
    ones = np.ones(5)
    save_logprobs(ws, "five", "pol", ids, np.array(M_IM) - 10.0, ones, np.full(5, -10.0), ones)
    return ws


def test_registered_after_the_earlier_rules_and_named():
    assert metric_names()[7:] == ("bees", "chosen_reward", "selective_dpo", "clean", "clean_flip")
    assert get_metric("bees").needs == ("m_ex", "m_im") and get_metric("selective_dpo").needs == ("m_im",)
    assert get_metric("chosen_reward").needs == ("m_ex", "r_rejected")
    assert "2502.14560" not in get_metric("bees").description  # the description names the paper by its authors
    assert "Deng et al. 2025" in get_metric("bees").description
    assert "Gao et al. 2025" in get_metric("selective_dpo").description
    assert "2508.18312" in get_metric("chosen_reward").description


def test_bees_by_hand(five):
    frame = load_margins(five, "five", policy_fp="pol")
    np.testing.assert_allclose(frame["m_im"], M_IM)
    # log-odds m_ex/2 + m_im/1 = [1.5 - 1.5, 0.5 + 1.5, 0 + 0.5, -0.5 + 0, -1.5 - 0.5] = [0, 2, 0.5, -0.5, -2]
    sel = select(frame, SelectionSpec(metric="bees", ratio=0.4))  # k = 2
    np.testing.assert_allclose(sel.scores, [0, 2, 0.5, -0.5, -2])  # the score is P's log-odds
    # P as independent evidence: pair 1 has p_ex = sigmoid(0.5), p_im = sigmoid(1.5)
    p_ex, p_im = sigmoid(0.5), sigmoid(1.5)
    assert sigmoid(sel.scores[1]) == pytest.approx(p_ex * p_im / (p_ex * p_im + (1 - p_ex) * (1 - p_im)))
    assert sel.positions.tolist() == [1, 2]
    # M_AP rewards a small |m_im| instead: |m_im| = [1.5, 1.5, 0.5, 0, 0.5], mean 0.8, std 0.6,
    # z = [7/6, 7/6, -1/2, -4/3, -1/2]; M_AP = [1/3, -2/3, 1/2, 5/6, -1]: pairs 3 and 2
    assert select(frame, SelectionSpec(metric="map", ratio=0.4)).positions.tolist() == [3, 2]


def test_selective_dpo_by_hand(five):
    frame = load_margins(five, "five", policy_fp="pol")
    # loss = log(1 + exp(-m_im)); m_im descending: 1 (1.5), 2 (0.5), 3 (0), 4 (-0.5), 0 (-1.5)
    sel = select(frame, SelectionSpec(metric="selective_dpo", ratio=0.6))  # k = 3: the 2 hardest dropped
    np.testing.assert_allclose(sel.scores, [-math.log(1 + math.exp(1.5)), -math.log(1 + math.exp(-1.5)),
                                            -math.log(1 + math.exp(-0.5)), -math.log(2.0),
                                            -math.log(1 + math.exp(0.5))])
    assert sel.positions.tolist() == [1, 2, 3]
    view = compute_view(frame, ExploreControls(metric="selective_dpo", ratio=0.6))
    assert sorted(view.selection.positions.tolist()) == [1, 2, 3]


def test_chosen_reward_by_hand(five):
    frame = load_margins(five, "five", policy_fp="pol")
    # r_chosen = r_rejected + m_ex = [3, 5, 1, -1, 2], z = [0.5, 1.5, -0.5, -1.5, 0]
    sel = select(frame, SelectionSpec(metric="chosen_reward", ratio=0.6))  # k = 3
    np.testing.assert_allclose(sel.scores, [0.5, 1.5, -0.5, -1.5, 0.0])
    assert sel.positions.tolist() == [1, 0, 4]
    # pair 4 has the worst margin (-3) but a good chosen answer: the margin alone keeps 0, 1, 2 instead
    assert select(frame, SelectionSpec(metric="explicit", ratio=0.6)).positions.tolist() == [0, 1, 2]
    assert {"bees", "chosen_reward", "selective_dpo"} <= set(margin_sources(frame).runnable)


def test_select_cli_and_audit_subsets(five, capsys):
    root = ["--workspace", str(five.root), "--policy", "pol"]
    assert main(["select", "five", "--metric", "bees", "--ratio", "0.4", "--out", "b.jsonl", *root]) == 0
    rows = [json.loads(line) for line in (five.root / "exports" / "b.jsonl").read_text().splitlines()]
    assert [r["chosen"] for r in rows] == ["good 1", "good 2"]  # pair-table order
    manifest = json.loads((five.root / "exports" / "b.jsonl.manifest.json").read_text())
    assert manifest["selection"]["metric"] == "bees"
    subsets = build_subsets(five, "five", metrics=["selective_dpo", "chosen_reward"], ratio=0.6, policy_fp="pol")
    ids = list(five.load_pairs("five")["pair_id"])
    assert subsets == {"selective_dpo": [ids[1], ids[2], ids[3]], "chosen_reward": [ids[1], ids[0], ids[4]]}


def test_bees_keeps_the_order_where_the_probability_would_round_to_one():
    from marginlens.core.selection.bayes_margin import BayesMarginProbability
    from marginlens.core.selection.metric_base import MarginInputs

    # heavy tails: two outliers among 5,000 pairs scale to log-odds of about 50, where P == 1.0 in float64;
    # their order must survive
    m_ex = np.zeros(5000)
    m_ex[1], m_ex[2] = 1000.0, 1001.0
    x = MarginInputs({"m_ex": m_ex, "m_im": np.zeros(5000)}, 5000)
    scores = BayesMarginProbability().formula(x, None)
    assert 1.0 / (1.0 + math.exp(-scores[1])) == 1.0 / (1.0 + math.exp(-scores[2])) == 1.0
    assert scores[2] > scores[1]
