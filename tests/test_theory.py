"""The Theorem 3.1 simulation (core.experiments.theory) and its Theory tab (app.theory_view)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_results import mean_interval
from marginlens.core.experiments.theory import MAX_WORK, TheorySpec, reward_model_cases, simulate, work
from marginlens.core.selection.metric_base import zscore

from tests.helpers_app import no_errors

SMALL = TheorySpec(d=5, pool=300, iterations=60, seeds=3)


@pytest.fixture(scope="module")
def default_run():
    return simulate()


def test_same_spec_same_numbers_and_a_seed_does_not_depend_on_its_neighbours():
    first, again = simulate(SMALL), simulate(SMALL)
    alone = simulate(replace(SMALL, seeds=1, seed=SMALL.seed + 1))
    for sampler, curve in first.curves.items():
        np.testing.assert_array_equal(curve.direction, again.curves[sampler].direction)
        np.testing.assert_array_equal(curve.distance, again.curves[sampler].distance)
        np.testing.assert_array_equal(curve.direction[1], alone.curves[sampler].direction[0])
    other = simulate(replace(SMALL, seed=SMALL.seed + 7))
    assert not np.array_equal(first.curves["uniform"].direction, other.curves["uniform"].direction)


def test_both_samplers_start_from_the_same_point_and_learn(default_run):
    uniform, adversarial = default_run.curves["uniform"], default_run.curves["adversarial"]
    np.testing.assert_array_equal(uniform.direction[:, 0], adversarial.direction[:, 0])
    np.testing.assert_array_equal(uniform.distance[:, 0], adversarial.distance[:, 0])
    start = uniform.direction[:, 0].mean()
    assert uniform.final() < 0.5 * start and adversarial.final() < 0.5 * start


def test_adversarial_sampling_gets_closer_than_uniform_on_the_defaults(default_run):
    # the effect the theorem predicts, on the direction error: the adversarial band lies below uniform's
    uniform, adversarial = default_run.curves["uniform"], default_run.curves["adversarial"]
    _, _, adversarial_hi = adversarial.band()
    _, uniform_lo, _ = uniform.band()
    assert adversarial_hi[-1] < uniform_lo[-1]
    assert adversarial.final() < 0.5 * uniform.final()
    # and already early on: fewer iterations to the same error
    assert adversarial.direction[:, 50].mean() < uniform.direction[:, 50].mean()


def test_label_noise_hurts_uniform_sampling_and_adversarial_sampling_avoids_flipped_labels():
    clean = simulate(replace(TheorySpec(), noise=0.0))
    noisy = simulate(replace(TheorySpec(), noise=0.3))
    for curve in clean.curves.values():
        assert curve.flipped_share.max() == 0.0
    assert noisy.curves["uniform"].flipped_share.mean() == pytest.approx(0.3, abs=0.03)
    assert noisy.curves["adversarial"].flipped_share.mean() < noisy.curves["uniform"].flipped_share.mean() - 0.05
    assert noisy.curves["uniform"].final() > clean.curves["uniform"].final() + 0.05
    # the uniform learner's scale shrinks under symmetric flips: its raw distance keeps a floor
    assert noisy.curves["uniform"].final(raw=True) > clean.curves["uniform"].final(raw=True) + 0.5


def test_the_adversarial_sampler_is_no_better_than_its_reward_model():
    exact = simulate(replace(SMALL, iterations=150))
    wrong = simulate(replace(SMALL, iterations=150, rm_noise=1.0))
    assert wrong.curves["adversarial"].final() > exact.curves["adversarial"].final() + 0.2
    # the uniform sampler never reads the reward model
    np.testing.assert_array_equal(wrong.curves["uniform"].direction, exact.curves["uniform"].direction)


@pytest.mark.parametrize(("change", "field"), [
    ({"d": 0}, "d"), ({"pool": 5}, "pool"), ({"iterations": 0}, "iterations"), ({"seeds": 2.5}, "seeds"),
    ({"noise": 0.5}, "noise"), ({"noise": -0.1}, "noise"), ({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"),
    ({"w": -1.0}, "w"), ({"top_share": 0.0}, "top_share"), ({"pool": 50, "top_share": 0.01}, "top_share"),
    ({"rm_noise": -0.5}, "rm_noise"), ({"batch": True}, "batch"),
    ({"seeds": 1000, "pool": 100_000}, "pool"), ({"seeds": 100, "iterations": 100_000}, "iterations"),
    # 3e9 multiply-adds passed the old cap and took 10-20 s; the tab's own maxima are refused too
    ({"seeds": 50, "iterations": 3000, "pool": 2000, "d": 10}, "iterations"),
    ({"seeds": 10, "iterations": 3000, "pool": 20_000, "d": 100}, "iterations"),
    ({"seeds": 1, "iterations": 20_000, "pool": 10, "d": 1, "batch": 1}, "iterations"),
])
def test_bad_parameters_are_refused_by_name(change, field):
    with pytest.raises(MarginLensError, match=f"field '{field}'"):
        simulate(replace(SMALL, **change))


def test_the_band_is_the_labs_t_interval_over_seeds():
    result = simulate(SMALL)
    curve = result.curves["adversarial"]
    mean, lo, hi = curve.band()
    for t in (0, 10, SMALL.iterations):
        lab = mean_interval(list(curve.direction[:, t]))
        assert (mean[t], lo[t], hi[t]) == pytest.approx((lab["mean"], lab["ci_low"], lab["ci_high"]), rel=1e-9)
    one = simulate(replace(SMALL, seeds=1)).curves["uniform"].band()
    np.testing.assert_array_equal(one[1], one[2])  # one seed: no band


def test_the_row_wise_zscore_is_the_selection_metrics_own_per_row():
    values = np.array([[6.0, 4.0, 3.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 1.5, 1.0, 2.0, 3.0]])
    rows, warning = zscore(values, "m", axis=1)
    for row, z in zip(values, rows, strict=True):
        np.testing.assert_array_equal(z, zscore(row, "m")[0])
    assert "1 of 3" in warning and zscore(values[[0, 2]], "m", axis=1)[1] is None


def test_the_work_cap_admits_the_largest_pool_and_refuses_twice_the_cap():
    # the largest pool the tab offers, as many iterations as the cap allows (its seconds are a benchmark matter)
    spec = TheorySpec(pool=20_000, seeds=10, iterations=1)
    spec = replace(spec, iterations=max(1, MAX_WORK // work(spec)))
    assert work(spec) <= MAX_WORK < work(replace(spec, iterations=2 * spec.iterations))
    with pytest.raises(MarginLensError, match="iterations"):
        simulate(replace(spec, iterations=2 * spec.iterations))


def _theory_script():
    from marginlens.app.theory_view import render_theory

    render_theory()


def test_the_theory_tab_renders_the_chart_the_numbers_and_the_assumptions():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_theory_script, default_timeout=60).run()
    no_errors(at)
    values = {m.label: m.value for m in at.metric}
    result = simulate()
    assert values["final error, uniform"] == f"{result.curves['uniform'].final():.3f}"
    assert values["final error, adversarial"] == f"{result.curves['adversarial'].final():.3f}"
    text = "\n".join(m.value for m in at.markdown)
    assert "What it does not show" in text and "Theorem 3.1" in text
    assert at.get("plotly_chart")

    at.slider(key="_theory_noise").set_value(0.0).run()
    no_errors(at)
    assert {m.label: m.value for m in at.metric}["flipped labels trained on, uniform"] == "0.0%"

    at.toggle(key="_theory_raw").set_value(True).run()
    raw = {m.label: m.value for m in at.metric}
    assert raw["final error, uniform"] == f"{simulate(replace(TheorySpec(), noise=0.0)).curves['uniform'].final(True):.3f}"

    at.number_input(key="_theory_pool").set_value(50).run()
    at.slider(key="_theory_top").set_value(0.01).run()
    assert not at.exception
    assert any("top_share" in e.value for e in at.error)


def test_a_noisy_reward_model_makes_the_map_sampler_worse_than_uniform():
    cases = reward_model_cases()
    exact, noisy = cases["exact"].curves, cases["noisy"].curves
    assert cases["noisy"].spec.rm_noise == 1.0 and cases["exact"].spec.rm_noise == 0.0
    assert exact["adversarial"].final() < exact["uniform"].final()
    assert noisy["adversarial"].final() > noisy["uniform"].final() + 0.3


def test_the_theory_tab_shows_the_noisy_reward_model_beside_the_exact_one():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_theory_script, default_timeout=60).run()
    no_errors(at)
    values = {m.label: m.value for m in at.metric}
    cases = reward_model_cases()
    for name in ("exact", "noisy"):
        for sampler in ("uniform", "adversarial"):
            assert values[f"{name} RM: final error, {sampler}"] == f"{cases[name].curves[sampler].final():.3f}"
    assert values["noisy RM: final error, adversarial"] != values["exact RM: final error, adversarial"]
    text = "\n".join(m.value for m in at.markdown)
    assert "Noisy reward model (reward-model error 1)" in text and "Reward model right" in text
    noisy = cases["noisy"].curves
    assert (f"ends at {noisy['adversarial'].final():.3f}, worse than uniform sampling's "
            f"{noisy['uniform'].final():.3f}") in text
    assert "relies on the reward model being right" in text and "confidently wrong" in text
    assert len(at.get("plotly_chart")) == 3

    # the comparison follows the other settings (here the label noise), not only the defaults
    at.slider(key="_theory_noise").set_value(0.0).run()
    moved = reward_model_cases(replace(TheorySpec(), noise=0.0))
    values = {m.label: m.value for m in at.metric}
    assert values["noisy RM: final error, adversarial"] == f"{moved['noisy'].curves['adversarial'].final():.3f}"
