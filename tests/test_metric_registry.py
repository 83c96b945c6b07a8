"""The metric registry: a new selection metric is one small class, and every consumer picks it up: select(),
compare_metrics, the audit's subsets, the CLI's --metric and the Explore page's metric picker."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_app import DATASET, POLICY_FP, app_test, build_workspace, metrics, no_errors
from marginlens.core.audit.subsets import build_subsets, ordered
from marginlens.core.cli import main
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.compare import compare_metrics
from marginlens.core.selection.metrics import (
    MarginInputs,
    Metric,
    MetricParams,
    get_metric,
    metric_names,
    register,
    unregister,
)
from marginlens.core.selection.select import SelectionSpec, select


class SmallGap(Metric):
    """The kind of class a later issue adds (e.g. Meta's RIP small-gap rule): here the smallest |m_ex| first."""

    name = "small_gap"
    needs = ("m_ex",)
    direction = "smaller"
    description = "smallest reward gap |m_ex| first (a test metric)"

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        return np.abs(x["m_ex"])


class NeedsReference(Metric):
    name = "needs_reference"
    needs = ("ref_chosen_logp",)
    description = "reads a column the frame may not have"

    def formula(self, x: MarginInputs, p: MetricParams) -> np.ndarray:
        return x["ref_chosen_logp"]


@pytest.fixture
def small_gap():
    register(SmallGap)
    yield SmallGap.name
    unregister(SmallGap.name)  # the registry is process-wide: leave it as the other tests expect it


def frame() -> pd.DataFrame:
    return pd.DataFrame({"pair_id": [f"p{i}" for i in range(7)],
                         "m_ex": [3.0, -0.5, 2.0, 0.1, -4.0, 1.0, np.nan],
                         "m_im": [0.2, 0.1, -0.3, 0.4, 0.0, -0.1, 0.5]})


def test_builtin_registry_order_and_attributes():
    # the paper's baselines first, then the published rules (core.selection.published_rules)
    assert metric_names() == ("map", "explicit", "implicit", "random", "threshold", "rip", "dpo_gap", "bees",
                              "chosen_reward", "selective_dpo", "clean", "clean_flip")
    assert get_metric("map").needs == ("m_ex", "m_im") and get_metric("random").needs == ()
    assert get_metric("implicit").direction == "smaller" and get_metric("implicit").uses == ("signed",)
    with pytest.raises(MarginLensError, match="unknown metric 'nope' \\(expected one of map, explicit"):
        get_metric("nope")


def test_a_registered_metric_selects_through_select(small_gap):
    assert metric_names()[-1] == "small_gap"
    sel = select(frame(), SelectionSpec(metric="small_gap", ratio=0.5))
    # pair 6 has no m_ex: not a candidate; k = int(0.5 * 6) = 3; |m_ex| = 3, .5, 2, .1, 4, 1
    assert (sel.n_candidates, sel.k) == (6, 3)
    assert sel.positions.tolist() == [3, 1, 5] and sel.pair_ids == ["p3", "p1", "p5"]
    assert sel.scores[:6].tolist() == [-3.0, -0.5, -2.0, -0.1, -4.0, -1.0]  # "smaller" oriented: higher first
    assert sel.spec.to_dict()["metric"] == "small_gap"
    report = compare_metrics(frame(), ratio=0.5)
    # every metric the frame can run: it has no rejected reward (rip, chosen_reward), no DPO-form m_im (dpo_gap)
    # and no judge column (clean, clean_flip)
    assert list(report.selected) == ["map", "explicit", "implicit", "random", "threshold", "bees", "selective_dpo",
                                     "small_gap"]
    assert report.selected["small_gap"].tolist() == [3, 1, 5]
    with pytest.raises(MarginLensError, match="already registered"):
        register(SmallGap)


def test_a_metric_needing_a_missing_column_names_it():
    register(NeedsReference)
    try:
        with pytest.raises(MarginLensError, match="needs the ref_chosen_logp column, which 'this dataset'"):
            select(frame(), SelectionSpec(metric="needs_reference"))
    finally:
        unregister(NeedsReference.name)


def test_cli_offers_a_registered_metric(small_gap, capsys):
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "small_gap" in out and "small_gap: smallest reward gap |m_ex| first" in out
    assert main(["select", "nope", "--metric", "small_gap", "--out", "x.jsonl", "--workspace", "/nonexistent-ws"]) == 2
    assert "no dataset named 'nope'" in capsys.readouterr().err  # the choice was accepted; the dataset is missing


def test_explore_and_audit_offer_a_registered_metric(small_gap, tmp_path):
    ws = build_workspace(tmp_path / "workspace", n=30)
    at = app_test("explore_page.py", ws)
    at.run()
    assert "small_gap" in at.selectbox(key="_ctl_metric").options
    at.selectbox(key="_ctl_metric").set_value("small_gap").run()
    no_errors(at)
    assert metrics(at)["Selected (top-k)"] == str(int(0.4 * 31))
    assert at.slider(key="_ctl_weight").disabled  # small_gap reads no weight
    # An audit compares the paper's metrics by default (each subset costs judge calls); any other is asked by name.
    assert list(ordered(build_subsets(ws, DATASET, policy_fp=POLICY_FP))) == ["map", "explicit", "implicit", "random"]
    named = build_subsets(ws, DATASET, metrics=["map", "small_gap"], policy_fp=POLICY_FP)
    assert list(named) == ["map", "small_gap"] and len(named["small_gap"]) == int(0.4 * 31)
