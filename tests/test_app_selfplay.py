"""Self-play page through AppTest: the form and its plan above Start, refusals in words, Start submitting the job
the CLI would (then cancelled), and a finished run's timeline, results table, chart and lineage, drawn from job
folders written by hand through core.jobs (no model runs for that part)."""

from __future__ import annotations

import json
import sys

import pytest
from helpers_app import app_test, no_errors, serve_config, worker_environ
from helpers_experiment import DATASET, build_dataset
from judge_server import ScriptedJudge
from marginlens.app import selfplay_timeline as tl
from marginlens.app import selfplay_view as sv
from marginlens.app.widgets import md_escape
from marginlens.core import jobs
from marginlens.core.atomic import write_json
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.experiment_results import cell_key
from marginlens.core.job_status import JobState
from marginlens.core.jobs import Job, job_id_for
from marginlens.core.selfplay.prompt_pool import DROP_REASONS, write_pool
from marginlens.core.selfplay.selfplay_results import selfplay_table
from marginlens.core.selfplay.selfplay_spec import build_selfplay_spec, plan_selfplay, selfplay_metrics
from tiny_models import tiny_llama  # noqa: F401  (session fixture)

ANNOTATE, EVAL = "verifier:self-consistency", "verifier:answer-match"
# the page's defaults on CPU, spelled out: the reference profile, its length filter off
SAMPLING = {"n": 5, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 128}
EVOLVE = {"max_new_tokens": 128}


@pytest.fixture
def sp_ws(tmp_path, monkeypatch):
    serve_config(monkeypatch, tmp_path / "serve", data_roots=[tmp_path])  # eval sets are server paths
    return build_dataset(tmp_path / "workspace")


def model_root(tmp_path, monkeypatch, model) -> None:
    """The dashboard launched with the test's model folder as a data root too."""
    serve_config(monkeypatch, tmp_path / "serve", data_roots=[tmp_path, model])


def test_empty_workspace(ws):
    at = app_test("selfplay_page.py", ws)
    at.run()
    no_errors(at)
    assert any("No dataset yet" in i.value for i in at.info)
    assert any(c.value == "No self-play run yet." for c in at.caption)
    assert all(b.key != "_sp_start" for b in at.button)


def test_form_plan_and_refusals(sp_ws):
    at = app_test("selfplay_page.py", sp_ws)
    at.run()
    no_errors(at)
    assert at.multiselect(key="_sp_metrics").value == ["map", "explicit"]
    assert any("eva's own rule" in c.value for c in at.caption)
    assert at.multiselect(key="_sp_strategies").value == ["breadth", "deepen", "constrain", "concretize", "reason"]
    assert at.radio(key="_sp_profile").value == "reference"
    at.number_input(key="_sp_max_prompts").set_value(6)
    at.multiselect(key="_sp_strategies").set_value(["breadth", "reason"]).run()
    no_errors(at)
    spec = build_selfplay_spec(sp_ws, DATASET, annotate=ANNOTATE, eval=EVAL, max_prompts=6,
                               strategies=["breadth", "reason"], sampling=SAMPLING, evolve=EVOLVE)
    shown = "\n".join(m.value for m in at.markdown)
    assert all(md_escape(line) in shown for line in plan_selfplay(sp_ws, spec).lines()), shown
    assert not jobs.list_jobs(sp_ws)  # the form starts nothing
    at.text_input(key="_sp_annotate").input("").run()
    (error,) = [e.value for e in at.error]
    assert "name an annotator" in error
    assert all(b.key != "_sp_start" for b in at.button)
    at.text_input(key="_sp_annotate").input("judge:some-model").run()
    assert any("a judge compares two models" in e.value for e in at.error), [e.value for e in at.error]
    at.text_input(key="_sp_annotate").input(ANNOTATE)
    at.text_input(key="_sp_eval_set").input(str(sp_ws.root / "no-such.jsonl")).run()
    assert len(at.error) == 1 and "no such file" in at.error[0].value
    assert not at.exception


def test_start_submits_the_cli_spec(sp_ws, tiny_llama, tmp_path, monkeypatch):  # noqa: F811
    model_root(tmp_path, monkeypatch, tiny_llama)
    at = app_test("selfplay_page.py", sp_ws)
    at.run()
    at.text_input(key="_sp_policy").input(str(tiny_llama))
    at.number_input(key="_sp_iterations").set_value(1)
    at.number_input(key="_sp_max_prompts").set_value(4)
    at.text_area(key="_sp_settings").input("max_steps=1").run()
    no_errors(at)
    at.button(key="_sp_start").click().run()
    (job,) = jobs.list_jobs(sp_ws, "selfplay")
    job.cancel()
    no_errors(at)
    spec = build_selfplay_spec(sp_ws, DATASET, annotate=ANNOTATE, eval=EVAL, policy=str(tiny_llama), iterations=1,
                               max_prompts=4, sampling=SAMPLING, evolve=EVOLVE, overrides={"max_steps": 1})
    assert job.spec["params"] == spec.to_params()  # the very run `marginlens selfplay` would start
    assert at.session_state["selfplay_job"] == job.id
    assert any(job.id in m.value for m in at.markdown)  # its job panel
    assert job.wait(poll=0.2, timeout=180).state is JobState.CANCELLED, job.log_tail(20)
    assert not any(j.status().live for j in jobs.list_jobs(sp_ws))


# --- a finished run, written by hand -------------------------------------------------------------------------
def fake_job(ws, kind: str, params: dict, state: str = "done") -> Job:
    job = Job(ws.jobs_dir / job_id_for(kind, params))
    write_json(job.dir / "spec.json", {"kind": kind, "params": params, "job_id": job.id, "created": "2026-01-01"})
    write_json(job.dir / "status.json", {"state": state, "message": state, "done": 1, "total": 1})
    return job


def write_jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


REWRITE = "Anna has 2 apples and buys 3 more: how many now, step by step?"
DEEPER = "Anna has 2 apples, buys 3 more and eats one: how many are left, step by step?"


def fake_evolution(ws, pool, iteration: int, kept: list[dict], dropped: list[dict], tag: str = "hand") -> Job:
    """An evolve job's results as the job writes them: the pool rows through write_pool, the summary."""
    evolve = fake_job(ws, "evolve", {"prompts": str(pool), "iteration": iteration, "tag": tag})
    write_pool(evolve.dir / "results" / "evolved.jsonl", kept)  # no rows: an empty file, as the job leaves it
    write_jsonl(evolve.dir / "results" / "dropped.jsonl", dropped)
    write_json(evolve.dir / "results" / "summary.json",
               {"asked": len(kept) + len(dropped), "kept": len(kept), "strategies": ["reason@1", "deepen@1"],
                "dropped": {r: sum(d["reason"] == r for d in dropped) for r in DROP_REASONS}})
    return evolve


def finished_run(ws):
    spec = build_selfplay_spec(ws, DATASET, annotate=ANNOTATE, eval=EVAL, iterations=2, seeds=2)
    run = fake_job(ws, "selfplay", spec.to_params())
    pool = run.dir / "results" / "seeds.jsonl.gz"  # gzipped pools are read as the jobs read them
    write_pool(pool, [{"id": "p1", "prompt": "What is 2 plus 3?", "parent": None, "strategy": None,
                       "iteration": 0, "root": "p1"},
                      {"id": "p2", "prompt": "What is 4 plus 5?", "parent": None, "strategy": None,
                       "iteration": 0, "root": "p2"}])
    rewrite = {"id": "p1>reason", "prompt": REWRITE, "parent": "p1", "strategy": "reason@1", "iteration": 1,
               "root": "p1"}
    evolve = fake_evolution(ws, pool, 1, [rewrite], [
        {"id": "p2>breadth", "prompt": "What is 4 plus 5?", "parent": "p2", "strategy": "breadth@1",
         "iteration": 1, "root": "p2", "reason": "same_as_parent", "raw": "\"What is 4 plus 5?\""}])
    second_pool = run.dir / "results" / "round-1.jsonl.gz"
    write_pool(second_pool, [rewrite])
    evolve2 = fake_evolution(ws, second_pool, 2, [
        {"id": "p1>reason>deepen", "prompt": DEEPER, "parent": "p1>reason", "strategy": "deepen@1", "iteration": 2,
         "root": "p1"}], [])
    sampled = fake_job(ws, "rollout", {"prompts": str(pool), "tag": "hand"})
    means = {("map", 42): (0.30, 0.40), ("map", 43): (0.32, 0.44), ("explicit", 42): (0.25, 0.30),
             ("explicit", 43): (0.27, 0.28)}
    state = {"message": "done", "eval_set": "eval.jsonl", "seeds": str(pool),
             "baseline": {"mean": 0.2, "n": 4, "eval_job": "evaluate-gone", "step": "done"}, "chains": {}}
    for (metric, seed), values in means.items():
        rounds = []
        for t, mean in enumerate(values, 1):
            rounds.append({"iteration": t, "step": "done",
                           "pool": {"job": sampled.id, "prompts": 12, "answers": 60, "pairs": 10, "ties": 2,
                                    "invalid": 0, "truncated": 0},
                           "selection": {"candidates": 10, "k": 3, "warnings": []},
                           "evolve": {"job": (evolve if t == 1 else evolve2).id, "asked": 15, "kept": 11,
                                      "dropped": {"too_long": 3, "duplicate": 1, "empty": 0}},
                           "rewrites": {"job": sampled.id, "prompts": 11, "answers": 55, "pairs": 9, "ties": 2},
                           "train": {"job": "train-gone", "pairs": 19},
                           "eval": {"eval_job": "evaluate-gone", "mean": mean, "n": 4, "invalid": 0}})
        state["chains"][cell_key(metric, seed)] = {"metric": metric, "seed": seed, "rounds": rounds}
    write_json(run.dir / "results" / "state.json", state)
    write_json(run.dir / "results" / "table.json", selfplay_table(spec, state))
    return run, evolve, sampled


def test_finished_run_timeline_table_and_lineage(sp_ws):
    run, evolve, sampled = finished_run(sp_ws)
    at = app_test("selfplay_page.py", sp_ws)
    at.run()
    no_errors(at)
    assert at.selectbox(key="_sp_run").value == run.id
    assert len(at.dataframe) == 4  # timeline, results, kept and dropped rewrites, in that order
    timeline = at.dataframe[0].value
    assert len(timeline) == 8  # 2 metrics x 2 seeds x 2 iterations
    first = timeline.iloc[0]
    assert first["chain"] == cell_key("map", 42) and first["iteration"] == 1
    assert first["sampled"] == "12 prompts, 10 pairs, 2 ties" and first["selected"] == "3 of 10"
    assert first["rewrites asked"] == 15 and first["kept"] == 11 and first["dropped"] == "too_long 3, duplicate 1"
    assert first["training pairs"] == 19 and first["eval mean"] == pytest.approx(0.30)
    assert first["evolve job"] == f"done · {evolve.id}" and first["sampling job"] == f"done · {sampled.id}"
    assert first["train job"] == "missing · train-gone"
    assert any(md_escape("mean 0.200 over 4 eval prompts") in c.value for c in at.caption)
    table = at.dataframe[1].value
    assert list(table["iteration"]) == [0, 1, 1, 2, 2]
    assert list(table["metric"]) == ["starting model", "map", "explicit", "map", "explicit"]
    assert table["mean"].iloc[0] == pytest.approx(0.2) and table["mean"].iloc[3] == pytest.approx(0.42)
    assert table["per seed"].iloc[3] == "0.400 0.440" and table["95% interval"].iloc[3].startswith("[")
    (chart,) = at.get("plotly_chart")
    figure = json.loads(chart.proto.spec)
    lines = {t["name"]: t for t in figure["data"] if t.get("mode") == "lines+markers"}
    assert set(lines) == {"map", "explicit"}
    assert lines["map"]["x"] == [0, 1, 2] and lines["map"]["y"] == pytest.approx([0.2, 0.31, 0.42])
    assert at.selectbox(key="_sp_lineage_round").value == f"{cell_key('map', 42)} iteration 1"
    kept = at.dataframe[2].value
    assert list(kept["parent's prompt"]) == ["What is 2 plus 3?"] and list(kept["strategy"]) == ["reason@1"]
    assert list(kept["iteration"]) == [1] and list(kept["root"]) == ["p1"]
    assert list(kept["root's prompt"]) == ["What is 2 plus 3?"]
    dropped = at.dataframe[3].value
    assert list(dropped["reason"]) == ["same_as_parent"] and list(dropped["parent's prompt"]) == ["What is 4 plus 5?"]
    assert any(c.value == f"1 kept, 1 dropped (evolve job done · {evolve.id})" for c in at.caption)
    # the second round: the parent is a rewrite (read from its .jsonl.gz pool), the root the seed it started from
    at.selectbox(key="_sp_lineage_round").set_value(f"{cell_key('map', 42)} iteration 2").run()
    no_errors(at)
    assert len(at.dataframe) == 3  # nothing dropped: no dropped table
    kept = at.dataframe[2].value
    assert list(kept["id"]) == ["p1>reason>deepen"] and list(kept["iteration"]) == [2]
    assert list(kept["parent's prompt"]) == [REWRITE]
    assert list(kept["root"]) == ["p1"] and list(kept["root's prompt"]) == ["What is 2 plus 3?"]


def test_lineage_of_an_empty_a_running_and_a_broken_evolution(sp_ws):
    run, _, _ = finished_run(sp_ws)
    pool = run.dir / "results" / "seeds.jsonl.gz"
    empty = fake_evolution(sp_ws, pool, 1, [], [
        {"id": "p1>breadth", "prompt": "", "parent": "p1", "strategy": "breadth@1", "iteration": 1, "root": "p1",
         "reason": "empty", "raw": "``` ```"}], tag="empty")
    assert (empty.dir / "results" / "evolved.jsonl").read_bytes() == b""  # kept 0: the file is empty, not read
    kept, dropped = tl.lineage(sp_ws, empty.id, str(pool))
    assert kept.empty and list(dropped["reason"]) == ["empty"] and list(dropped["parent's prompt"]) == [
        "What is 2 plus 3?"]
    running = fake_job(sp_ws, "evolve", {"prompts": str(pool), "iteration": 1, "tag": "running"}, state="running")
    kept, dropped = tl.lineage(sp_ws, running.id, str(pool))
    assert kept.empty and dropped.empty  # no rows until it is done
    # a kept row that breaks the pool format is refused with its file, line and field, not shown half-read
    row = {"id": "p2>reason", "prompt": "Why 9?", "parent": "p2", "strategy": "reason@1", "iteration": 1, "root": "p2"}
    broken = fake_evolution(sp_ws, pool, 1, [row], [], tag="broken")
    write_jsonl(broken.dir / "results" / "evolved.jsonl", [{**row, "strategy": "reason"}])
    with pytest.raises(MarginLensError, match=r"evolved.jsonl: line 1, field 'strategy'"):
        tl.lineage(sp_ws, broken.id, str(pool))
    kept, _ = tl.lineage(sp_ws, fake_evolution(sp_ws, pool, 1, [row], [], tag="no seeds").id)
    assert list(kept["root's prompt"]) == [""]  # no seeds file named: the root's prompt is not looked up


def test_metrics_offered_are_the_selfplay_ones(sp_ws):
    at = app_test("selfplay_page.py", sp_ws)
    at.run()
    no_errors(at)
    offered = at.multiselect(key="_sp_metrics").options
    assert offered == list(selfplay_metrics()) and "dpo_gap" not in offered and "rip" not in offered
    assert "answer-match" not in at.text_input(key="_sp_annotate").help  # needs a reference a rewrite lacks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the worker's environment from /proc")
def test_openai_evolver_endpoint_and_key(sp_ws, tiny_llama, tmp_path, monkeypatch):  # noqa: F811
    model_root(tmp_path, monkeypatch, tiny_llama)
    at = app_test("selfplay_page.py", sp_ws)
    at.run()
    assert not [t for t in at.text_input if "endpoint" in (t.key or "")]  # a local evolver asks no endpoint
    with ScriptedJudge(models=["writer"]) as server:
        at.text_input(key="_sp_policy").input(str(tiny_llama))
        at.number_input(key="_sp_iterations").set_value(1)
        at.number_input(key="_sp_max_prompts").set_value(4)
        at.text_input(key="_sp_evolver").input("openai:writer").run()
        assert any("pick a configured endpoint" in e.value for e in at.error), [e.value for e in at.error]
        at.text_input(key="_sp_evolver_endpoint_url").input(server.base_url)
        at.number_input(key="_sp_evolver_max_calls").set_value(3).run()
        no_errors(at)
        assert not [t for t in at.text_input if "key_env" in (t.key or "")]  # no variable a client could name
        assert not [t for t in at.text_input if t.key in ("_sp_annotate_endpoint_url", "_sp_eval_endpoint_url")]
        at.text_input(key="_sp_evolver_endpoint_key").input("sk-typed-on-the-page")
        at.button(key="_sp_start").click().run()
        no_errors(at)
    (job,) = jobs.list_jobs(sp_ws, "selfplay")
    try:
        evolver = job.spec["params"]["evolver"]
        assert (evolver["api_key_env"], evolver["max_calls"], evolver["base_url"]) == (
            sv.KEY_VARIABLES["evolver"], 3, server.base_url)
        assert "sk-typed" not in json.dumps(job.spec)  # the key travels in the environment only
        assert worker_environ(job).get(sv.KEY_VARIABLES["evolver"]) == "sk-typed-on-the-page"
    finally:
        job.cancel()
    assert job.wait(poll=0.2, timeout=180).state is JobState.CANCELLED, job.log_tail(20)


def test_worker_env_puts_each_key_under_its_part_s_variable(sp_ws):
    from marginlens.app.access import EndpointChoice

    rater, judge, writer = "http://127.0.0.1:7001/v1", "http://127.0.0.1:7002/v1", "http://127.0.0.1:7003/v1"
    spec = build_selfplay_spec(sp_ws, DATASET, annotate=f"rating:rater,base_url={rater},api_key_env=RATER_KEY",
                               eval=f"judge:j,base_url={judge},api_key_env=JUDGE_KEY", evolver="openai:writer",
                               evolver_url=writer, evolver_key_env="WRITER_KEY")
    assert [(w, v) for w, _, _, v in sv.llm_parts(spec)] == [("annotator", "RATER_KEY"), ("evaluator", "JUDGE_KEY"),
                                                              ("evolver", "WRITER_KEY")]
    picked = {"annotator": EndpointChoice(rater, "k-rater"), "evaluator": EndpointChoice(judge, None),
              "evolver": EndpointChoice(writer, "k-writer")}
    none = {"OPENAI_API_KEY": ""}  # always set: no worker inherits the server's
    assert sv.worker_env(spec, picked) == {**none, "RATER_KEY": "k-rater", "JUDGE_KEY": "", "WRITER_KEY": "k-writer"}
    # a key goes to its own URL only: picked for another URL, nobody gets it
    wrong = {"annotator": EndpointChoice(judge, "k-for-the-judge-url")}
    assert sv.worker_env(spec, wrong) == {**none, "RATER_KEY": "", "JUDGE_KEY": "k-for-the-judge-url",
                                          "WRITER_KEY": ""}
    assert sv.worker_env(spec, {}) == {**none, "RATER_KEY": "", "JUDGE_KEY": "", "WRITER_KEY": ""}


def test_profile_choice_and_whole_strategy_descriptions(sp_ws):
    from marginlens.core.selfplay.strategies import STRATEGIES

    at = app_test("selfplay_page.py", sp_ws)
    at.run()
    at.number_input(key="_sp_max_prompts").set_value(6).run()
    no_errors(at)
    shown = "\n".join(m.value for m in at.markdown)
    # the chips hold the names; every picked strategy's description is on the page, whole
    assert all(f"**{name}**: {s.description}" in shown for name, s in STRATEGIES.items())
    assert md_escape("profile reference (the authors' evol_select scripts)") in shown
    assert md_escape("128 new tokens for answers and 128 for rewrites (CPU") in shown
    at.multiselect(key="_sp_strategies").set_value(["deepen"]).run()
    shown = "\n".join(m.value for m in at.markdown)
    assert f"**deepen**: {STRATEGIES['deepen'].description}" in shown and "**breadth**" not in shown

    at.checkbox(key="_sp_filter_prompt").check()
    at.number_input(key="_sp_train_size").set_value(3).run()
    no_errors(at)
    shown = "\n".join(m.value for m in at.markdown)
    assert md_escape("at most 3 rewrite pairs") in shown and md_escape("length filter on (5x)") in shown

    at.radio(key="_sp_profile").set_value("marginlens").run()
    no_errors(at)
    spec = build_selfplay_spec(sp_ws, DATASET, annotate=ANNOTATE, eval=EVAL, max_prompts=6, strategies=["deepen"],
                               sampling=SAMPLING, profile="marginlens")
    assert spec.rules == {} and spec.evolve_params(0).max_ratio == 5.0
    shown = "\n".join(m.value for m in at.markdown)
    assert all(md_escape(line) in shown for line in plan_selfplay(sp_ws, spec).lines()), shown
    assert md_escape("profile marginlens") in shown
