"""The experiment orchestrator end to end on a tiny Llama: 2 metrics x 2 seeds, one training step each, a
held-out eval set and a throwaway verifier; a kill -9 of the orchestrator and of its running child in the
middle, then a resubmission; the table it ends with equals one rebuilt from scratch out of the child jobs;
the CLI prints it and writes it as JSON; the Experiments page shows it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers_app import app_test, no_errors
from helpers_experiment import (
    DATASET,
    VERIFIER,
    build_dataset,
    kill_job,
    register_test_verifier,
    unregister_test_verifier,
)
from marginlens.core import jobs
from marginlens.core.atomic import read_json
from marginlens.core.cli import main
from marginlens.core.experiments.eval_set import load_eval_set
from marginlens.core.experiments.evaluate_job import evaluation_summary
from marginlens.core.experiments.experiment_job import experiment_state, experiment_table, submit_experiment
from marginlens.core.experiments.experiment_results import cell_key
from marginlens.core.experiments.experiment_spec import build_spec
from marginlens.core.job_status import JobState
from tiny_models import single_thread, tiny_llama  # noqa: F401  (session fixture)

single_thread()

FAST = {"learning_rate": 1e-3, "lr_scheduler_type": "constant", "warmup_steps": 0, "per_device_train_batch_size": 4,
        "effective_batch_size": 4, "max_length": 64, "max_steps": 1, "save_steps": 100}
EVAL = f"verifier:{VERIFIER},max_new_tokens=8"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_llama):  # noqa: F811
    folder = tmp_path_factory.mktemp("lab")
    register_test_verifier(folder / "plugin")
    ws = build_dataset(folder / "workspace", policy=str(tiny_llama))
    spec = build_spec(ws, DATASET, metrics=["map", "random"], ratio=0.5, method="simpo", seeds=2, eval=EVAL,
                      policy=str(tiny_llama), overrides=FAST, device="cpu")
    job = submit_experiment(ws, spec)
    # kill -9 the orchestrator and the train job it waits on, in the middle of the second cell
    deadline = time.monotonic() + 240
    while True:
        cell = experiment_state(job).get("cells", {}).get(cell_key("random", 42), {})
        if cell.get("train_job") and jobs.get_job(ws, cell["train_job"]).is_alive():
            break
        assert job.status().live, job.log_tail(30)
        assert time.monotonic() < deadline, job.log_tail(30)
        time.sleep(0.05)
    child = jobs.get_job(ws, cell["train_job"])
    kill_job(job)
    if child.is_alive():
        kill_job(child)
    assert job.status().state is JobState.INTERRUPTED
    resumed = submit_experiment(ws, spec)
    assert resumed.id == job.id
    status = job.wait(poll=0.3, timeout=400)
    assert status.state is JobState.DONE, job.log_tail(40)
    yield ws, spec, job
    unregister_test_verifier(folder / "plugin")


def test_kill_9_then_resubmit_finishes_every_cell_once(lab, tmp_path):
    ws, spec, job = lab
    table = job.result()
    assert table == experiment_table(job) and table["complete"]
    # one child job per step, none started twice under another id
    assert len(jobs.list_jobs(ws, "train")) == 4
    assert len(jobs.list_jobs(ws, "evaluate")) == 5
    state = experiment_state(job)
    eval_rows = load_eval_set(state["eval_set"])
    assert len(eval_rows) == 2 and all(r["answer"] and r["task"] == "arithmetic" for r in eval_rows)
    # the children ran inside the orchestrator's worker (core.job_host), the resumed one included
    # (two orchestrator processes: the one killed and the resumed one), each child writing its own log
    children = (*jobs.list_jobs(ws, "train"), *jobs.list_jobs(ws, "evaluate"))
    pids = {child.status().pid for child in children}
    assert job.status().pid in pids and len(pids) <= 2, pids
    assert all(child.log_tail(5) for child in children)
    # the train jobs trained with the experiment's configuration and their cell's seed, on their cell's subset
    for (metric, seed) in spec.cells:
        cell = state["cells"][cell_key(metric, seed)]
        params = jobs.get_job(ws, cell["train_job"]).spec["params"]
        assert params["trl"]["seed"] == seed and params["trl"]["max_steps"] == 1 and params["method"] == "simpo"
        assert params["data"] == cell["export"]
        summary = evaluation_summary(jobs.get_job(ws, cell["eval_job"]))
        assert cell["mean"] == summary.mean and cell["n"] == summary.n == 2
    # the table is these values
    by_metric = {r["metric"]: r for r in table["rows"]}
    for metric in spec.metrics:
        values = [state["cells"][cell_key(metric, s)]["mean"] for s in spec.seeds]
        assert by_metric[metric]["values"] == values
        assert by_metric[metric]["mean"] == pytest.approx(sum(values) / 2)
        assert by_metric[metric]["ci_low"] <= by_metric[metric]["mean"] <= by_metric[metric]["ci_high"]
    baseline = evaluation_summary(jobs.get_job(ws, state["baseline"]["eval_job"]))
    assert table["baseline"]["mean"] == baseline.mean and table["baseline"]["n"] == 2
    # random's subsets differ by seed, map's do not
    exports = {c: open(state["cells"][c]["export"], encoding="utf-8").read() for c in state["cells"]}
    assert exports["map/42"] == exports["map/43"] and exports["random/42"] != exports["random/43"]
    # no held-out prompt was trained on
    held = {r["prompt"] for r in eval_rows}
    for text in exports.values():
        assert not any(json.loads(line)["prompt"] in held for line in text.splitlines())
    # each export, the interrupted cell's included, is byte for byte what an uninterrupted selection writes
    from marginlens.core.experiments.experiment_plan import prepare, selection_for
    from marginlens.core.selection.export import export_selection

    prepared = prepare(ws, spec)
    for metric, seed in spec.cells:
        fresh = tmp_path / f"{metric}-{seed}.jsonl"
        export_selection(ws, spec.dataset, selection_for(prepared, spec, metric, seed), prepared.margins, fresh,
                         "jsonl", overwrite=True, apply_flags=False, allow_outside=True)
        assert fresh.read_text(encoding="utf-8") == exports[cell_key(metric, seed)], (metric, seed)
    assert read_json(job.dir / "results" / "candidates.json")["pairs"] == len(prepared.margins)


def test_the_table_is_a_function_of_the_children(lab):
    """Rebuilt from scratch (the orchestrator's folder removed), the experiment finds every child done and
    ends with the identical table."""
    import shutil

    ws, spec, job = lab
    before = job.result()
    shutil.rmtree(job.dir)
    again = submit_experiment(ws, spec)
    assert again.wait(poll=0.3, timeout=200).state is JobState.DONE, again.log_tail(30)
    assert again.result() == before
    assert len(jobs.list_jobs(ws, "train")) == 4 and len(jobs.list_jobs(ws, "evaluate")) == 5


def test_cli_prints_the_table_and_writes_json(lab, tiny_llama, capsys, tmp_path):  # noqa: F811
    ws, spec, job = lab
    out = tmp_path / "table.json"
    code = main(["experiment", DATASET, "--workspace", str(ws.root), "--metrics", "map,random", "--ratio", "0.5",
                 "--method", "simpo", "--seeds", "2", "--eval", EVAL, "--policy", str(tiny_llama), "--device", "cpu",
                 *[a for k, v in FAST.items() for a in ("--set", f"{k}={v}")], "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert f"experiment job {job.id}" in text  # the same experiment: joined, not started again
    assert "95% t-interval over seeds" in text and "baseline (starting model)" in text
    written = json.loads(out.read_text())
    assert written["rows"] == job.result()["rows"] and written["experiment_job"] == job.id


def test_page_shows_the_finished_experiment(lab, monkeypatch, tmp_path):
    from helpers_app import serve_config

    ws, spec, job = lab
    serve_config(monkeypatch, tmp_path / "serve", data_roots=[Path(spec.policy).parent])  # the tiny model's folder
    at = app_test("experiments_page.py", ws)
    at.session_state["experiments_job"] = job.id
    at.session_state["_exp_policy"] = spec.policy  # the form's default model is not the one the table scored
    at.run()
    no_errors(at)
    frames = [df.value for df in at.dataframe]
    table = next(f for f in frames if "95% interval" in f.columns)
    assert list(table["metric"]) == ["baseline (starting model)", "map", "random"]
    row = job.result()["rows"][0]
    assert table.loc[table["metric"] == "map", "mean"].iloc[0] == pytest.approx(row["mean"])
    assert any("t-interval" in c.value for c in at.caption)
    (chart,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key == "_exp_chart"]
    assert chart["data"][0]["x"] == ["map", "random"]
    assert chart["data"][0]["y"] == pytest.approx([r["mean"] for r in job.result()["rows"]])
