"""Experiments page through AppTest: the form and its estimate above Start, a refusal in words, Start
submitting the experiment job the CLI would (then cancelled), and the Theory tab beside it. The results
view of a finished experiment is tested in test_experiment_job.py, on the experiment that file runs."""

from __future__ import annotations

import json
import time

import pytest
from helpers_app import app_test, no_errors, serve_config
from helpers_experiment import (
    DATASET,
    VERIFIER,
    arithmetic_records,
    build_dataset,
    register_test_verifier,
    unregister_test_verifier,
)
from marginlens.app.widgets import md_escape
from marginlens.core import jobs
from marginlens.core.data.ingest import import_dataset
from marginlens.core.experiments.experiment_job import experiment_state
from marginlens.core.experiments.experiment_plan import plan_experiment
from marginlens.core.experiments.experiment_spec import build_spec
from marginlens.core.job_status import JobState
from marginlens.core.scoring.models import DEFAULT_POLICY
from tiny_models import tiny_llama  # noqa: F401  (session fixture)


@pytest.fixture
def lab_ws(tmp_path, tiny_llama, monkeypatch):  # noqa: F811
    serve_config(monkeypatch, tmp_path / "serve", data_roots=[tiny_llama, tmp_path])  # the model, eval sets
    register_test_verifier(tmp_path / "plugin")
    yield build_dataset(tmp_path / "workspace", policy=str(tiny_llama))
    unregister_test_verifier(tmp_path / "plugin")


def test_empty_workspace(ws):
    at = app_test("experiments_page.py", ws)
    at.run()
    no_errors(at)
    assert any("No dataset yet" in i.value for i in at.info)
    assert any(c.value == "No experiment yet." for c in at.caption)
    assert [t.label for t in at.tabs] == ["Lab", "Theory"]


def test_form_estimate_and_start(lab_ws, tiny_llama):  # noqa: F811
    at = app_test("experiments_page.py", lab_ws)
    at.run()
    assert not at.exception
    # the default starting model is not the one the policy table was scored with: refused, naming both
    (refusal,) = [e.value for e in at.error]
    assert md_escape(str(tiny_llama)) in refusal and md_escape(DEFAULT_POLICY) in refusal
    at.text_input(key="_exp_eval").input(f"verifier:{VERIFIER}").run()
    at.text_input(key="_exp_policy").input(str(tiny_llama))
    at.multiselect(key="_exp_metrics").set_value(["map", "random"])
    at.number_input(key="_exp_seeds").set_value(2)
    at.text_area(key="_exp_settings").input("max_steps=2\nlearning_rate=1e-5").run()
    no_errors(at)
    spec = build_spec(lab_ws, DATASET, metrics=["map", "random"], ratio=0.4, method="simpo", seeds=2,
                      eval=f"verifier:{VERIFIER}", policy=str(tiny_llama),
                      overrides={"max_steps": 2, "learning_rate": 1e-5})
    plan = plan_experiment(lab_ws, spec)
    assert plan.runs == 4 and plan.total_steps == 8  # 2 metrics x 2 seeds, max_steps 2
    shown = "\n".join(m.value for m in at.markdown)
    assert all(md_escape(line) in shown for line in plan.lines()), shown
    assert not jobs.list_jobs(lab_ws, "experiment")  # the form starts nothing
    at.button(key="_exp_start").click().run()
    no_errors(at)
    (job,) = jobs.list_jobs(lab_ws, "experiment")
    assert job.spec["params"] == spec.to_params()  # the very experiment the CLI would start
    assert at.session_state["experiments_job"] == job.id
    assert any(job.id in m.value for m in at.markdown)  # its job panel
    # Cancel reaches the running child: the experiment ends cancelled and leaves no child running
    deadline = time.monotonic() + 60
    while not experiment_state(job).get("baseline", {}).get("eval_job"):
        assert job.status().live and time.monotonic() < deadline, job.log_tail(20)
        time.sleep(0.05)
    child = jobs.get_job(lab_ws, experiment_state(job)["baseline"]["eval_job"])
    job.cancel()
    assert job.wait(poll=0.2, timeout=120).state is JobState.CANCELLED, job.log_tail(20)
    assert child.status().state in (JobState.CANCELLED, JobState.DONE), child.log_tail(20)
    assert not any(j.status().live for j in jobs.list_jobs(lab_ws))


def test_refusals_are_shown_in_words(lab_ws, tmp_path):
    source = tmp_path / "bare.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_records()), encoding="utf-8")
    import_dataset(source, "bare", lab_ws)  # explicit scores only: no implicit margin
    at = app_test("experiments_page.py", lab_ws)
    at.run()
    at.text_input(key="_exp_eval").input("verifier:no-such-verifier").run()
    assert any("unknown verifier" in e.value for e in at.error)
    at.text_input(key="_exp_eval").input(f"verifier:{VERIFIER}")
    at.selectbox(key="_exp_dataset").set_value("bare").run()
    assert any("not scored for map, implicit" in e.value for e in at.error), [e.value for e in at.error]
    assert all(b.key != "_exp_start" for b in at.button)  # nothing to start


def test_an_llm_evaluator_asks_the_picked_endpoint(lab_ws, tiny_llama):  # noqa: F811
    at = app_test("experiments_page.py", lab_ws)
    at.run()
    at.text_input(key="_exp_policy").input(str(tiny_llama))
    at.text_input(key="_exp_eval").input("judge:test-judge").run()
    assert any("pick a configured endpoint" in e.value for e in at.error), [e.value for e in at.error]
    at.text_input(key="_exp_endpoint_url").input("http://127.0.0.1:9/v1").run()
    assert not at.error, [e.value for e in at.error]
    at.button(key="_exp_start").click().run()
    assert any("cannot reach the judge endpoint" in e.value for e in at.error), [e.value for e in at.error]
    assert not jobs.list_jobs(lab_ws, "experiment")


def test_an_eval_set_outside_the_data_roots_is_refused(lab_ws, tiny_llama):  # noqa: F811
    at = app_test("experiments_page.py", lab_ws)
    at.run()
    at.text_input(key="_exp_policy").input(str(tiny_llama))
    at.text_input(key="_exp_eval").input(f"verifier:{VERIFIER}")
    at.text_input(key="_exp_eval_set").input("/etc/hostname").run()
    assert any("outside the data roots" in e.value for e in at.error), [e.value for e in at.error]
    assert all(b.key != "_exp_start" for b in at.button)
