"""The experiment's plan without running anything: held-out prompts and what leaves the candidates, the
eval-set overlap, the missing-margin refusal, and the estimate's counts (pairs, steps, generations)."""

from __future__ import annotations

import json
import math

import pytest
from helpers_app import POLICY_FP, write_policy
from helpers_experiment import (
    DATASET,
    VERIFIER,
    arithmetic_records,
    build_dataset,
    register_test_verifier,
    stamp_policy,
    unregister_test_verifier,
)
from marginlens.core.data.ingest import import_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.eval_set import write_eval_set
from marginlens.core.experiments.experiment_plan import (
    heldout_count,
    plan_experiment,
    prepare,
    selection_for,
    steps_per_run,
)
from marginlens.core.experiments.experiment_spec import ExperimentSpec, build_spec
from marginlens.core.workspace import Workspace

EVAL = f"verifier:{VERIFIER},max_new_tokens=10"
POLICY = "test-org/never-loaded"  # a Hub id: the plan loads no model, and the policy table records it
SETTINGS = {"per_device_train_batch_size": 2, "effective_batch_size": 4, "num_train_epochs": 2}


@pytest.fixture(scope="module")
def lab_ws(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan")
    register_test_verifier(folder / "plugin")
    yield build_dataset(folder / "workspace", policy=POLICY)
    unregister_test_verifier(folder / "plugin")


def _spec(ws, **kw):
    args = {"metrics": ["map", "explicit", "implicit", "random"], "ratio": 0.4, "seeds": 3, "eval": EVAL,
            "overrides": SETTINGS, "device": "cpu", "policy": POLICY}
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


def test_the_policy_table_must_be_the_starting_models(lab_ws):
    """The implicit margin is the margin of the model that trains: another model's table is refused by
    name unless named explicitly; metrics that do not read it need no table."""
    with pytest.raises(MarginLensError) as exc:
        _spec(lab_ws, policy="other-org/another-model")
    assert "'test-org/never-loaded'" in str(exc.value) and "'other-org/another-model'" in str(exc.value)
    assert "--policy-table" in str(exc.value)
    named = _spec(lab_ws, policy="other-org/another-model", policy_fp=POLICY_FP)
    assert named.policy_fp == POLICY_FP
    assert _spec(lab_ws, policy="other-org/another-model", metrics=["explicit", "random"]).policy_fp is None
    assert _spec(lab_ws).policy_fp == POLICY_FP


def test_a_local_starting_model_is_identified_by_its_files(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights one")
    ws = build_dataset(tmp_path / "ws", policy=str(folder))
    first = build_spec(ws, DATASET, eval=EVAL, policy=str(folder), device="cpu")
    assert first.policy_identity and first.policy_fp == POLICY_FP
    (folder / "model.safetensors").write_bytes(b"weights two")  # retrained in place
    with pytest.raises(MarginLensError, match="was scored with"):
        build_spec(ws, DATASET, eval=EVAL, policy=str(folder), device="cpu")  # the table is the old model's
    again = build_spec(ws, DATASET, eval=EVAL, policy=str(folder), device="cpu", policy_fp=POLICY_FP)
    assert again.policy_identity != first.policy_identity and again.to_params() != first.to_params()


def test_a_grown_score_table_is_another_experiment(tmp_path):
    ws = build_dataset(tmp_path / "ws", policy=POLICY)
    spec = _spec(ws)
    assert spec.table_rows == {"policy": 20}
    write_policy(ws, DATASET, seed=3)  # scored again under the same fingerprint (here: rewritten)
    stamp_policy(ws, POLICY)
    import pyarrow.parquet as pq
    from marginlens.core.atomic import read_json, write_json

    folder = ws.scores_dir / DATASET / POLICY_FP
    pq.write_table(pq.read_table(folder / "scores.parquet").slice(0, 15), folder / "scores.parquet")
    write_json(folder / "manifest.json", {**read_json(folder / "manifest.json"), "rows": 15})
    with pytest.raises(MarginLensError, match="held 20 rows when this experiment was planned and holds 15"):
        prepare(ws, spec)
    assert _spec(ws).table_rows == {"policy": 15}  # planned again: a new experiment


def test_selection_parameters_and_the_dpo_form_reach_the_selection(lab_ws):
    spec = _spec(lab_ws, weight=0.25, signed=True, threshold=2.0)
    chosen = selection_for(prepare(lab_ws, spec), spec, "map", spec.seeds[0])
    assert (chosen.spec.weight, chosen.spec.signed, chosen.spec.threshold) == (0.25, True, 2.0)
    assert spec.to_params() != _spec(lab_ws).to_params()
    with pytest.raises(MarginLensError, match="not scored for dpo_gap"):
        prepare(lab_ws, _spec(lab_ws, metrics=["dpo_gap"]))
    write_policy(lab_ws, DATASET, seed=5, fingerprint="logprob-test-reference")
    spec = _spec(lab_ws, metrics=["dpo_gap", "map"], reference_fp="logprob-test-reference", beta=0.1)
    prepared = prepare(lab_ws, spec)
    assert prepared.margins.attrs["m_im_form"] == "dpo" and prepared.margins.attrs["beta"] == 0.1
    assert plan_experiment(lab_ws, spec, prepared).pairs_per_metric["dpo_gap"] > 0


def test_a_verifiers_fields_are_checked_on_every_eval_row(tmp_path):
    from marginlens.core.experiments import verifiers

    verifiers.register_verifier(verifiers.Verifier("exp-test-needs-answer", "1", "test only", lambda r, row: 0.0))
    try:
        ws = Workspace(tmp_path / "ws")
        source = tmp_path / "noanswer.jsonl"
        source.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "answer"}) + "\n"
                                  for r in arithmetic_records()), encoding="utf-8")
        import_dataset(source, "noanswer", ws)
        spec = build_spec(ws, "noanswer", metrics=["explicit"], eval="verifier:exp-test-needs-answer", device="cpu",
                          policy=POLICY)
        with pytest.raises(MarginLensError, match="held-out rows of dataset 'noanswer': row '[0-9a-f]+' has no 'answer'"):
            plan_experiment(ws, spec)
        path = tmp_path / "eval.jsonl"
        write_eval_set(path, [{"prompt": "p1", "answer": "1", "id": "a"}, {"prompt": "p2", "id": "b"}])
        spec = build_spec(ws, "noanswer", metrics=["explicit"], eval="verifier:exp-test-needs-answer", device="cpu",
                          policy=POLICY, eval_set=path)
        with pytest.raises(MarginLensError, match=r"eval.jsonl: row 'b' has no 'answer'"):
            prepare(ws, spec)
    finally:
        verifiers._REGISTRY.pop("exp-test-needs-answer", None)


def test_credentials_in_the_eval_url_are_refused(lab_ws):
    with pytest.raises(MarginLensError, match="not in the URL") as exc:
        _spec(lab_ws, eval="judge:some-judge", eval_url="https://user:secret@example.com/v1")
    assert "secret" not in str(exc.value)


def test_an_llm_evaluator_is_capped_at_the_plans_requests(lab_ws):
    from marginlens.core.experiments.experiment_plan import capped

    spec = _spec(lab_ws, eval="judge:some-judge,base_url=http://127.0.0.1:9/v1")
    text = "\n".join(plan_experiment(lab_ws, spec).lines())
    assert "requests capped at 5 per evaluated model" in text  # 2 eval prompts, both orders, + a quarter for retries
    assert capped(spec.evaluator, 2).max_calls == 5
    assert capped(_spec(lab_ws, eval="judge:j,base_url=http://127.0.0.1:9/v1,max_calls=9").evaluator, 2).max_calls == 9
    assert capped(_spec(lab_ws).evaluator, 2).max_calls is None  # a verifier sends nothing


def test_the_plan_warns_when_runs_would_barely_train(lab_ws):
    from marginlens.core.experiments.experiment_plan import FEW_STEPS, plan_experiment

    few = plan_experiment(lab_ws, _spec(lab_ws, overrides={**SETTINGS, "max_steps": 1}))
    assert any("only 1 optimizer step(s)" in line for line in few.lines())
    enough = plan_experiment(lab_ws, _spec(lab_ws, overrides={**SETTINGS, "max_steps": FEW_STEPS}))
    assert not any("optimizer step(s)" in line for line in enough.lines())


def test_a_dead_judge_endpoint_is_refused_before_anything_starts(lab_ws):
    from marginlens.core.experiments.experiment_job import submit_experiment

    spec = _spec(lab_ws, eval="judge:j,base_url=http://127.0.0.1:9/v1")
    with pytest.raises(MarginLensError, match="cannot reach the judge endpoint http://127.0.0.1:9/v1"):
        submit_experiment(lab_ws, spec, env={"OPENAI_API_KEY": "sk-test"})
    assert not list(lab_ws.jobs_dir.glob("experiment-*")), "nothing was submitted"
