"""The experiment table's statistics on hand-computed numbers (Student's t over seeds), one seed without
an interval, the table's rows and text, the page's frame and chart, and the audit agreement read back."""

from __future__ import annotations

import math

import pytest
from marginlens.app import experiments_view as ev
from marginlens.core.experiments.experiment_results import (
    INTERVAL_METHOD,
    ONE_SEED,
    audit_agreement,
    mean_interval,
    results_table,
    t_quantile,
    table_lines,
)


def test_t_interval_on_hand_numbers():
    # values 0.2, 0.4, 0.6: mean 0.4, s = 0.2, t(0.975, 2) = 4.302653, half-width 4.302653 * 0.2 / sqrt(3)
    assert t_quantile(2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(1) == pytest.approx(12.706205, abs=1e-6)
    stats = mean_interval([0.2, 0.4, 0.6])
    assert stats["mean"] == pytest.approx(0.4) and stats["std"] == pytest.approx(0.2)
    assert stats["half_width"] == pytest.approx(0.496828, abs=1e-6)
    assert (stats["ci_low"], stats["ci_high"]) == pytest.approx((-0.096828, 0.896828), abs=1e-6)
    # two seeds: 1 degree of freedom; s = |a - b| / sqrt(2)
    two = mean_interval([0.5, 0.7])
    assert two["half_width"] == pytest.approx(12.706205 * (0.2 / math.sqrt(2)) / math.sqrt(2), abs=1e-6)
    # equal values: a zero-width interval, not NaN
    assert mean_interval([0.3, 0.3, 0.3])["half_width"] == 0


def test_one_seed_and_missing_values():
    one = mean_interval([0.25])
    assert one["mean"] == 0.25 and one["ci_low"] is None and one["half_width"] is None
    assert mean_interval([None, 0.5, float("nan")])["n_seeds"] == 1
    assert mean_interval([])["mean"] is None


def _cells():
    return {"map/1": {"mean": 0.2, "n": 10, "pairs": 4}, "map/2": {"mean": 0.4, "n": 10, "pairs": 4},
            "map/3": {"mean": 0.6, "n": 10, "pairs": 4}, "random/1": {"mean": 0.1, "n": 10, "pairs": 4}}


def test_table_rows_partial_and_text():
    table = results_table(["map", "random"], [1, 2, 3], _cells(), {"mean": 0.15, "n": 10}, "verifier:x")
    assert table["interval"] == INTERVAL_METHOD and not table["complete"]  # random has one seed of three
    by = {r["metric"]: r for r in table["rows"]}
    assert by["map"]["values"] == [0.2, 0.4, 0.6] and by["map"]["ci_high"] == pytest.approx(0.896828, abs=1e-6)
    assert by["random"]["values"] == [0.1, None, None] and by["random"]["ci_low"] is None
    assert by["map"]["n_prompts"] == 10 and by["map"]["pairs"] == 4
    lines = table_lines(table)
    assert lines[0] == f"verifier:x: {INTERVAL_METHOD}"
    assert any(line.startswith("baseline (starting model)  0.150") for line in lines)
    assert any("[-0.097, 0.897]" in line and "0.200 0.400 0.600" in line for line in lines)
    single = results_table(["map"], [1], {"map/1": {"mean": 0.5, "n": 3}}, {"mean": 0.1, "n": 3}, "verifier:x")
    assert single["interval"] == ONE_SEED and single["complete"]


def test_page_frame_chart_and_agreement_column():
    table = results_table(["map", "random"], [1, 2, 3], _cells(), {"mean": 0.15, "n": 10}, "verifier:x")
    agreement = {"judge_model": "j", "audit_job": "audit-1",
                 "subsets": {"map": {"agreement": 0.8, "ci_low": 0.6, "ci_high": 0.9, "decisive": 20, "n": 25}}}
    frame = ev.table_frame(table, agreement)
    assert list(frame["metric"]) == [ev.BASELINE, "map", "random"]
    assert list(frame["judge agreement (audit's own subsets)"]) == ["", "0.80 [0.60, 0.90] of 20", ""]
    # the audit's subsets are its own draw, never shown as this experiment's
    lines = table_lines(table, agreement)
    assert "audit's own subsets" in lines[1] and lines[-1].startswith("judge agreement: audit audit-1; different subsets")
    assert "different subsets" in ev.agreement_caption(agreement)
    assert frame.loc[1, "95% interval"] == "[-0.097, 0.897]"
    fig = ev.results_figure(table)
    (trace,) = fig.data
    assert list(trace.x) == ["map", "random"] and list(trace.y) == [pytest.approx(0.4), 0.1]
    assert list(trace.error_y.array) == [pytest.approx(0.496828, abs=1e-6), 0.0]
    assert fig.layout.shapes[0].y0 == 0.15  # the baseline line
    assert "t-interval" in ev.interval_caption(table)
    assert "no interval" in ev.interval_caption(results_table(["map"], [1], {}, None, "verifier:x"))
    assert ev.overrides_from_text("# c\nmax_steps=3\n\nlearning_rate=1e-5") == {"max_steps": 3, "learning_rate": 1e-5}


def test_no_audit_no_agreement(ws):
    assert audit_agreement(ws, "anything") is None
