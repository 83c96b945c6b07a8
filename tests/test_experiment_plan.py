"""The experiment's plan without running anything: held-out prompts and what leaves the candidates, the
eval-set overlap, the missing-margin refusal, and the estimate's counts (pairs, steps, generations)."""

from __future__ import annotations

import json
import math

import pytest
from helpers_experiment import (
    DATASET,
    VERIFIER,
    arithmetic_records,
    build_dataset,
    register_test_verifier,
    unregister_test_verifier,
)
from marginlens.core.data.ingest import import_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.eval_set import write_eval_set
from marginlens.core.experiments.experiment_plan import heldout_count, plan_experiment, prepare, steps_per_run
from marginlens.core.experiments.experiment_spec import ExperimentSpec, build_spec
from marginlens.core.workspace import Workspace

EVAL = f"verifier:{VERIFIER},max_new_tokens=10"
SETTINGS = {"per_device_train_batch_size": 2, "effective_batch_size": 4, "num_train_epochs": 2}


@pytest.fixture(scope="module")
def lab_ws(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan")
    register_test_verifier(folder / "plugin")
    yield build_dataset(folder / "workspace")
    unregister_test_verifier(folder / "plugin")


def _spec(ws, **kw):
    args = {"metrics": ["map", "explicit", "implicit", "random"], "ratio": 0.4, "seeds": 3, "eval": EVAL,
            "overrides": SETTINGS, "device": "cpu", "policy": "test-org/never-loaded"}  # the plan loads no model
    return build_spec(ws, DATASET, **{**args, **kw})


def test_heldout_count():
    assert heldout_count(17, 0.1, 200) == 2  # round(1.7)
    assert heldout_count(5000, 0.1, 200) == 200  # the cap
    assert heldout_count(3, 0.1, 200) == 1  # at least one
    assert heldout_count(2, 0.9, 200) == 1  # never all of them
    assert heldout_count(1, 0.1, 200) == 0


def test_heldout_prompts_leave_every_candidate_set(lab_ws):
    spec = _spec(lab_ws)
    prepared = prepare(lab_ws, spec)
    records = arithmetic_records()
    assert prepared.n_pairs == 20 and prepared.n_prompts == 17
    held = {r["prompt"] for r in prepared.eval_rows}
    assert len(held) == 2
    # each eval row carries its answer from the dataset's records, for the verifier
    for row in prepared.eval_rows:
        assert row["answer"] == next(r["answer"] for r in records if r["prompt"] == row["prompt"])
    pairs_with_held = sum(r["prompt"] in held for r in records)
    assert prepared.excluded_pairs == pairs_with_held and len(prepared.margins) == 20 - pairs_with_held
    # the same draw every time (the job recomputes it on resume)
    assert prepare(lab_ws, spec).eval_rows == prepared.eval_rows


def test_estimate_counts(lab_ws):
    spec = _spec(lab_ws)
    plan = plan_experiment(lab_ws, spec)
    n_candidates = 20 - prepare(lab_ws, spec).excluded_pairs
    k = int(0.4 * n_candidates)
    assert plan.runs == 12
    assert plan.pairs_per_metric == {m: k for m in spec.metrics}
    # batches of 2, accumulation 2 (effective 4): ceil(ceil(k / 2) / 2) steps an epoch, 2 epochs
    per_epoch = math.ceil(math.ceil(k / 2) / 2)
    assert plan.steps_per_metric == {m: 2 * per_epoch for m in spec.metrics}
    assert plan.total_steps == 12 * 2 * per_epoch
    assert plan.eval_prompts == 2
    assert plan.evaluation["generations"] == 2 * 13  # 12 runs and the baseline
    assert plan.evaluation["generated_tokens"] == 2 * 13 * 10
    text = "\n".join(plan.lines())
    assert "runs: 12" in text and f"total optimizer steps: {12 * 2 * per_epoch}" in text
    assert "held out from the dataset" in text


def test_steps_per_run():
    assert steps_per_run(10, {"max_steps": 7}, {}) == 7
    assert steps_per_run(10, {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
                              "num_train_epochs": 1}, {"num_processes": 1}) == 3  # 5 batches -> 3 updates
    assert steps_per_run(10, {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                              "num_train_epochs": 1.5}, {"num_processes": 2}) == 5  # 3 batches a process
    assert steps_per_run(1, {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 16,
                             "num_train_epochs": 1}, {}) == 1


def test_eval_set_prompts_in_the_dataset_leave_the_candidates(lab_ws, tmp_path):
    records = arithmetic_records()
    repeated = records[0]["prompt"]  # a question with two pairs
    assert sum(r["prompt"] == repeated for r in records) == 2
    path = tmp_path / "eval.jsonl"
    write_eval_set(path, [{"prompt": repeated, "answer": "1"}, {"prompt": records[5]["prompt"], "answer": "x"},
                          {"prompt": "A prompt the dataset does not hold", "answer": "y"}])
    spec = _spec(lab_ws, eval_set=path)
    prepared = prepare(lab_ws, spec)
    assert prepared.eval_prompts_in_dataset == 2 and prepared.excluded_pairs == 3
    assert len(prepared.eval_rows) == 3
    text = "\n".join(plan_experiment(lab_ws, spec, prepared).lines())
    assert "2 of them are dataset prompts, whose 3 pairs are no metric's candidates" in text
    # a changed eval set after planning is refused inside the job
    write_eval_set(path, [{"prompt": "other", "answer": "z"}])
    with pytest.raises(MarginLensError, match="changed since this experiment was planned"):
        prepare(lab_ws, spec)


def test_missing_margins_and_bad_requests_are_refused(lab_ws, tmp_path):
    ws = Workspace(tmp_path / "bare")
    source = tmp_path / "bare.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_records()), encoding="utf-8")
    import_dataset(source, "bare", ws)  # explicit scores, no policy table: no implicit margin
    spec = build_spec(ws, "bare", metrics=["explicit", "implicit"], eval=EVAL, device="cpu", policy="test-org/x")
    with pytest.raises(MarginLensError, match="not scored for implicit") as exc:
        prepare(ws, spec)
    assert "marginlens score bare" in str(exc.value)
    with pytest.raises(MarginLensError, match="unknown metric 'nope'"):
        _spec(lab_ws, metrics=["map", "nope"])
    with pytest.raises(MarginLensError, match="use --seeds"):
        _spec(lab_ws, overrides={"seed": 1})
    with pytest.raises(MarginLensError, match="ratio"):
        _spec(lab_ws, ratio=0)
    with pytest.raises(MarginLensError, match="unknown verifier"):
        _spec(lab_ws, eval="verifier:no-such-verifier")


def test_spec_round_trips_through_job_params(lab_ws):
    spec = _spec(lab_ws, seeds=[7, 9])
    assert spec.seeds == (7, 9) and spec.cells[:2] == [("map", 7), ("explicit", 7)]
    again = ExperimentSpec.from_params(json.loads(json.dumps(spec.to_params())))
    assert again == spec and again.evaluator.label == f"verifier:{VERIFIER}"
