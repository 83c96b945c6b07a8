"""Self-play end to end on CPU: SmolLM2-135M-Instruct evolves the prompts and answers them, a verifier
annotates, M_AP selects, SimPO trains one step per round, two iterations; the orchestrator and its running
child are killed with SIGKILL in the middle of the second iteration and the run is resubmitted.

What must hold afterwards: the run finishes; every step ran as one child job (none twice under another
id); the first iteration's results were not redone; every rewrite carries its lineage back to a seed
prompt; the second round samples from and trains the first round's model; the table has a value for
each iteration and the starting model.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from helpers_experiment import (
    DATASET,
    VERIFIER,
    build_dataset,
    kill_job,
    register_test_verifier,
    unregister_test_verifier,
)
from marginlens.core import jobs
from marginlens.core.job_status import JobState
from marginlens.core.selfplay.selfplay_job import (
    select_prompts,
    selfplay_results,
    selfplay_state,
    submit_selfplay,
    training_rows,
)
from marginlens.core.selfplay.selfplay_spec import build_selfplay_spec, plan_selfplay
from marginlens.core.training.runs import final_model_path
from tiny_models import single_thread, smollm2  # noqa: F401  (session fixture)

single_thread()

FAST = {"learning_rate": 1e-5, "lr_scheduler_type": "constant", "warmup_steps": 0, "per_device_train_batch_size": 2,
        "effective_batch_size": 2, "max_length": 160, "max_steps": 1, "save_steps": 100}
ANNOTATE = f"verifier:{VERIFIER}"
EVAL = f"verifier:{VERIFIER},max_new_tokens=8"


def _rows(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _round(job: jobs.Job, t: int) -> dict:
    rounds = selfplay_state(job).get("chains", {}).get("map/42", {}).get("rounds", [])
    return next((r for r in rounds if r["iteration"] == t), {})


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2):  # noqa: F811
    folder = tmp_path_factory.mktemp("selfplay")
    register_test_verifier(folder / "plugin")
    ws = build_dataset(folder / "workspace")
    spec = build_selfplay_spec(
        ws, DATASET, annotate=ANNOTATE, eval=EVAL, policy=str(smollm2), iterations=2, metrics=["map"], seeds=1,
        ratio=0.5, strategies="breadth,deepen", max_prompts=4,
        sampling={"n": 3, "max_new_tokens": 16, "batch_size": 4}, evolve={"max_new_tokens": 64, "batch_size": 4},
        overrides=FAST, device="cpu", profile="marginlens")
    job = submit_selfplay(ws, spec)
    # SIGKILL the orchestrator and the child it waits on, once the second iteration has a running child
    deadline = time.monotonic() + 900
    while True:
        second = _round(job, 2)
        running = [second[k]["job"] for k in ("pool", "evolve", "rewrites", "train") if second.get(k, {}).get("job")]
        if running and jobs.get_job(ws, running[-1]).is_alive():
            break
        assert job.status().live, job.log_tail(40)
        assert time.monotonic() < deadline, job.log_tail(40)
        time.sleep(0.1)
    first = _round(job, 1)
    before = {p: p.stat().st_mtime_ns for p in (jobs.get_job(ws, first["pool"]["job"]).dir / "results").iterdir()}
    child = jobs.get_job(ws, running[-1])
    kill_job(job)
    if child.is_alive():
        kill_job(child)
    assert job.status().state is JobState.INTERRUPTED
    resumed = submit_selfplay(ws, spec)
    assert resumed.id == job.id
    status = job.wait(poll=0.5, timeout=900)
    assert status.state is JobState.DONE, job.log_tail(60)
    yield ws, spec, job, before
    unregister_test_verifier(folder / "plugin")


def test_the_run_finishes_with_a_value_per_iteration(run):
    ws, spec, job, _ = run
    table = selfplay_results(job)
    assert table["complete"] and table["baseline"]["mean"] is not None
    assert [it["iteration"] for it in table["iterations"]] == [1, 2]
    for it in table["iterations"]:
        (row,) = it["rows"]
        assert row["metric"] == "map" and math.isfinite(row["mean"]) and row["pairs"][0] >= 1


def test_every_step_is_one_child_job_and_the_first_iteration_was_not_redone(run):
    ws, spec, job, before = run
    assert len(jobs.list_jobs(ws, "train")) == 2
    assert len(jobs.list_jobs(ws, "evaluate")) == 3  # the starting model and each iteration's model
    assert len(jobs.list_jobs(ws, "evolve")) == 2
    first = _round(job, 1)
    assert len(jobs.list_jobs(ws, "rollout")) == 2 + (1 if first["evolve"]["kept"] else 0) + (
        1 if _round(job, 2)["evolve"]["kept"] else 0)
    after = {p: p.stat().st_mtime_ns for p in (jobs.get_job(ws, first["pool"]["job"]).dir / "results").iterdir()}
    assert {p: after[p] for p in before} == before
    assert all(j.status().state is JobState.DONE for j in jobs.list_jobs(ws))


def test_rewrites_keep_their_lineage_and_the_second_round_starts_from_the_first_model(run):
    ws, spec, job, _ = run
    state = selfplay_state(job)
    seeds = {r["id"]: r for r in _rows(state["seeds"])}
    first, second = _round(job, 1), _round(job, 2)
    evolve1 = jobs.get_job(ws, first["evolve"]["job"])
    kept1 = _rows(evolve1.dir / "results" / "evolved.jsonl")
    assert kept1, "SmolLM2 kept no rewrite of the seed prompts"
    selected = json.loads((job.dir / "results" / "chains" / "map-s42" / "it1" / "selected.json").read_text())
    assert selected["k"] == len(selected["ids"]) == max(1, int(0.5 * selected["candidates"]))
    for row in kept1:
        assert row["parent"] in selected["ids"] and row["parent"] in seeds and row["root"] == row["parent"]
        assert row["iteration"] == 1 and row["strategy"] in ("breadth@1", "deepen@1")
        assert row["id"] == f"{row['parent']}>{row['strategy'].split('@')[0]}"
    # the second round's pool is the first round's rewrites, sampled and trained from the first round's model
    model1 = str(final_model_path(jobs.get_job(ws, first["train"]["job"])))
    rollout2 = jobs.get_job(ws, second["pool"]["job"]).spec["params"]
    assert {r["id"] for r in _rows(rollout2["prompts"])} == {r["id"] for r in kept1}
    assert rollout2["policy"] == model1
    assert jobs.get_job(ws, second["train"]["job"]).spec["params"]["model"] == model1
    for row in _rows(jobs.get_job(ws, second["evolve"]["job"]).dir / "results" / "evolved.jsonl"):
        assert row["iteration"] == 2 and row["parent"] in {r["id"] for r in kept1} and row["root"] in seeds


def test_training_pairs_are_the_round_s_pairs_best_against_worst(run):
    ws, spec, job, _ = run
    first = _round(job, 1)
    pairs = _rows(jobs.get_job(ws, first["pool"]["job"]).dir / "results" / "pairs.jsonl")
    if first.get("rewrites", {}).get("job"):
        pairs += _rows(jobs.get_job(ws, first["rewrites"]["job"]).dir / "results" / "pairs.jsonl")
    train = _rows(job.dir / "results" / "chains" / "map-s42" / "it1" / "train.jsonl")
    assert train == json.loads(json.dumps(training_rows(pairs)))
    for pair in pairs:
        assert pair["score_chosen"] == max(pair["rewards"]) > pair["score_rejected"] == min(pair["rewards"])
        assert pair["m_ex"] == pytest.approx(pair["score_chosen"] - pair["score_rejected"])
        assert pair["m_im"] == pytest.approx(pair["chosen_logp"] / pair["chosen_ntok"]
                                             - pair["rejected_logp"] / pair["rejected_ntok"])
    assert first["train"]["pairs"] == len(train)


def test_the_plan_counts_the_first_round(run):
    ws, spec, job, _ = run
    plan = plan_selfplay(ws, spec)
    assert plan.seed_prompts == 4 and plan.answers_first_round == 12 and plan.trainings == 2
    assert plan.evaluations == 3 and plan.selected_per_round == 2 and plan.rewrites_asked == 4


def test_selection_is_the_metric_s_top_k_over_the_round_s_pairs():
    # z(m_ex) = [1.5, 0.5, 0, -0.5, -1.5], z(|m_im|) = [-1.5, 0, -0.5, 0.5, 1.5] (core.selection.metric_base)
    pairs = [{"id": f"p{i}", "m_ex": ex, "m_im": im} for i, (ex, im) in
             enumerate(zip([6, 4, 3, 2, 0], [0.0, -1.5, 1.0, 2.0, -3.0], strict=True))]
    assert select_prompts(pairs, "map", 0.4, 42, 1.0, False)["ids"] == ["p0", "p2"]
    assert select_prompts(pairs, "explicit", 0.4, 42, 1.0, False)["ids"] == ["p0", "p1"]
    assert select_prompts(pairs, "map", 0.1, 42, 1.0, False)["ids"] == ["p0"]  # at least one prompt evolves
