"""Train page through AppTest, on a real export of an imported dataset and a real (tiny) DPO job; its
logic (app/training_view.py, core.training.train_data.list_exports) directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_app import DATASET, POLICY_FP, app_test, build_workspace, no_errors, serve_config
from marginlens.app import training_view as tv
from marginlens.app.explore_view import ExploreControls, compute_view
from marginlens.core import jobs
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.score_tables import list_score_tables
from marginlens.core.selection.export import export_selection
from marginlens.core.selection.margins import load_margins
from marginlens.core.training.presets import TRAINING_EXPLANATION
from marginlens.core.training.runs import CURVE_KEYS, final_model_path, read_metrics, submit_training
from marginlens.core.training.train_data import list_exports
from tiny_models import tiny_llama  # noqa: F401  (session fixture)

# As in test_training_jobs.py: a tiny model on CPU, a few quick steps.
FAST = {"learning_rate": 1e-3, "lr_scheduler_type": "constant", "warmup_steps": 0,
        "per_device_train_batch_size": 4, "effective_batch_size": 4, "max_length": 64}
CPU_PREFIX = "_train_f_dpo_dpo-paper_cpu_"  # form keys for method dpo, its default preset, device cpu


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama):  # noqa: F811
    """A workspace with an export of 6 pairs and a finished 4-step DPO job on it: (ws, export, job)."""
    ws = build_workspace(tmp_path_factory.mktemp("train-page") / "workspace", n=11)
    margins = load_margins(ws, DATASET, policy_fp=POLICY_FP)
    selection = compute_view(margins, ExploreControls(ratio=0.5)).selection
    export = export_selection(ws, DATASET, selection, margins, "curated.jsonl").path
    job = submit_training(ws, export, "dpo", model=str(tiny_llama), device="cpu",
                          overrides={**FAST, "max_steps": 4, "save_steps": 100})
    status = job.wait(poll=0.2, timeout=150)
    assert status.state == "done", f"{status}\n{job.log_tail(30)}"
    return ws, export, job


def charts(at) -> dict[str, dict]:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {s["data"][0]["name"]: s for s in specs}


def test_page_without_exports_or_runs(ws):
    at = app_test("train_page.py", ws)
    at.run()
    no_errors(at)
    assert any("No exports yet" in i.value for i in at.info)
    assert any(c.value == "No training run yet." for c in at.caption)


def test_finished_run_curves_explanation_final_model_and_rescore(trained):
    ws, export, job = trained
    at = app_test("train_page.py", ws)
    at.run()
    no_errors(at)
    assert at.selectbox(key="_train_export").value == str(export)
    assert at.selectbox(key="_train_run").value == job.id
    # every curve, drawn from the metrics file the job wrote
    rows = read_metrics(job)
    drawn = charts(at)
    assert set(drawn) == set(CURVE_KEYS)
    assert drawn["loss"]["data"][0]["y"] == [r["loss"] for r in rows]
    assert drawn["rewards/margins"]["data"][0]["x"] == [1, 2, 3, 4]
    assert any(m.value.strip() == TRAINING_EXPLANATION.strip() for m in at.markdown)
    assert str(final_model_path(job)) in [c.value for c in at.code]

    # the M_AP loop from the page: the trained model scores the export's source dataset as a new policy
    assert at.selectbox(key="_train_rescore_dataset").value == DATASET
    at.button(key="_train_rescore").click().run()
    no_errors(at)
    (score_job,) = jobs.list_jobs(ws, kind="score")
    assert any(score_job.id in m.value for m in at.markdown)  # its job panel, on this page
    assert score_job.wait(poll=0.2, timeout=120).state == "done", score_job.log_tail(30)
    models = {m.get("model") for m in list_score_tables(ws, DATASET, "logprob")}
    assert str(final_model_path(job)) in models


def test_launch_from_the_page_submits_a_train_job(trained, tiny_llama, tmp_path, monkeypatch):  # noqa: F811
    serve_config(monkeypatch, tmp_path / "serve", data_roots=[tiny_llama])  # the model folder is a server path
    ws, export, done_job = trained
    at = app_test("train_page.py", ws)
    at.run()
    at.selectbox(key="_train_device").set_value("cpu").run()
    rate = at.number_input(key=CPU_PREFIX + "learning_rate")
    assert rate.value == 1e-6 and "learning rate" in rate.help.lower()  # prefilled from the preset, with help
    at.text_input(key="_train_model").input(str(tiny_llama))
    at.number_input(key=CPU_PREFIX + "max_steps").set_value(1)
    at.number_input(key=CPU_PREFIX + "effective_batch_size").set_value(2)
    at.text_area(key=CPU_PREFIX + "extra").input("optim=sgd")
    assert len(jobs.list_jobs(ws, kind="train")) == 1  # editing the form launches nothing
    next(b for b in at.button if b.label == "Launch training").click().run()
    no_errors(at)
    launched = [j for j in jobs.list_jobs(ws, kind="train") if j.id != done_job.id]
    assert len(launched) == 1
    params = launched[0].spec["params"]
    assert params["overrides"] == {"max_steps": 1, "effective_batch_size": 2, "optim": "sgd"}
    assert params["data"] == str(export) and params["method"] == "dpo" and params["trl"]["learning_rate"] == 1e-6
    assert at.session_state["train_job"] == launched[0].id
    launched[0].cancel()
    launched[0].wait(poll=0.2, timeout=120)


def test_server_side_settings_and_models_outside_the_roots_are_refused(trained, tiny_llama, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    serve_config(monkeypatch, tmp_path / "serve")  # no data root
    ws, _, _ = trained
    before = {j.id for j in jobs.list_jobs(ws, kind="train")}
    at = app_test("train_page.py", ws)
    at.run()
    at.selectbox(key="_train_device").set_value("cpu").run()
    for extra in ("push_to_hub=true\nhub_model_id=someone/stolen", "deepspeed=/etc/ds.json", "report_to=wandb",
                  "model_init_kwargs={\"trust_remote_code\": true}", "accelerate_config=/etc/accelerate.yaml"):
        at.text_area(key=CPU_PREFIX + "extra").input(extra).run()
        assert any("not taken from the dashboard" in e.value or "reads no server paths" in e.value
                   for e in at.error), (extra, [e.value for e in at.error])
        assert next(b for b in at.button if b.label == "Launch training").disabled
    at.text_area(key=CPU_PREFIX + "extra").input("").run()
    no_errors(at)
    at.text_input(key="_train_model").input(str(tiny_llama))
    next(b for b in at.button if b.label == "Launch training").click().run()
    assert any("reads no server paths" in e.value for e in at.error), [e.value for e in at.error]
    assert {j.id for j in jobs.list_jobs(ws, kind="train")} == before


# ---- logic, directly --------------------------------------------------------------------------------

def test_overrides_are_what_the_user_changed():
    prefilled = {"learning_rate": 1e-6, "max_steps": -1, "bf16": False, "accelerate_config": None,
                 "lr_scheduler_type": "cosine"}
    edited = {"learning_rate": 1e-6, "max_steps": 5, "bf16": False, "accelerate_config": "",
              "lr_scheduler_type": "linear"}
    assert tv.overrides_from_form(prefilled, edited, "# a comment\noptim=sgd\n\nbeta=0.2") == {
        "max_steps": 5, "lr_scheduler_type": "linear", "optim": "sgd", "beta": 0.2}
    assert tv.overrides_from_form(prefilled, {**edited, "accelerate_config": "zero3"})["accelerate_config"] == "zero3"


def test_dashboard_overrides_confine_the_accelerate_config(tmp_path):
    def under_tmp(text: str, what: str) -> Path:  # as access.server_path with tmp_path its data root
        path = Path(text).resolve()
        assert path.is_relative_to(tmp_path), f"{what} {text} refused"
        return path

    assert tv.dashboard_overrides({"accelerate_config": "zero3", "max_steps": 2}, under_tmp) == {
        "accelerate_config": "zero3", "max_steps": 2}  # a TRL preset name: no file
    config = tmp_path / "acc.yaml"
    assert tv.dashboard_overrides({"accelerate_config": str(config)}, under_tmp) == {"accelerate_config": str(config)}
    with pytest.raises(AssertionError, match="refused"):
        tv.dashboard_overrides({"accelerate_config": "/etc/acc.yaml"}, under_tmp)
    with pytest.raises(AssertionError, match="refused"):  # a bare name TRL does not ship is a file: confined
        tv.dashboard_overrides({"accelerate_config": "Makefile"}, under_tmp)
    # trust_remote_code would run a model repo's own Python when TRL loads the reference model
    for key, value in (("hub_token", "x"), ("push_to_hub", True), ("fsdp_config", "/x.json"), ("trackio_space_id", "a"),
                       ("trust_remote_code", True)):
        with pytest.raises(MarginLensError, match=f"'{key}' is not taken from the dashboard"):
            tv.dashboard_overrides({key: value}, under_tmp)
    assert tv.dashboard_overrides({"push_to_hub": False, "report_to": "none"}, under_tmp) == {
        "push_to_hub": False, "report_to": "none"}


def test_list_exports_and_curves(trained):
    ws, export, job = trained
    (found,) = list_exports(ws)
    assert (found["path"], found["name"], found["format"], found["dataset"]) == (str(export), "curated.jsonl",
                                                                                 "jsonl", DATASET)
    assert found["rows"] == sum(1 for _ in export.open())
    figures = dict(tv.curve_figures([{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.5, "tokens_per_s": 10.0}]))
    assert list(figures) == ["loss", "tokens_per_s"] and figures["loss"]["data"][0]["y"] == [0.7, 0.5]
