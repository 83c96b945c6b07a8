"""The lab's evaluators, for real: the "evaluate" job end to end on tiny models (verifier; pairwise judge against a
scripted OpenAI-compatible server on 127.0.0.1), a real reward model, and LLM rating through the rating scorer."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import sys
from pathlib import Path

import pytest
from judge_server import Request, ScriptedJudge
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments import verifiers
from marginlens.core.experiments.eval_set import write_eval_set
from marginlens.core.experiments.evaluate_job import (
    evaluation_cost,
    evaluation_params,
    evaluation_summary,
    submit_evaluation,
)
from marginlens.core.experiments.evaluators import (
    EvalSpec,
    JudgeEvaluator,
    RatingEvaluator,
    RewardEvaluator,
    evaluator_versions,
    pairwise_outcome,
    parse_eval,
)
from marginlens.core.experiments.generation import GenerationParams, generate_responses
from marginlens.core.jobs import job_id_for
from marginlens.core.keyed_log import KeyedLog
from tiny_models import make_tiny_llama, single_thread, tiny_llama, tiny_reward  # noqa: F401

TESTS = Path(__file__).parent
PLUGIN = "eval_verifier_plugin"
ROWS = [{"prompt": "What is two plus three?", "answer": "five", "id": "add"},
        {"prompt": "Name a colour.", "answer": "blue", "id": "colour"},
        {"prompt": "Explain the reward margin please", "answer": "margin", "id": "margin"},
        {"prompt": "Write one python function", "answer": "def", "id": "code"},
        {"prompt": "Who is the capital of France?", "answer": "Paris", "id": "france"}]


@pytest.fixture(autouse=True)
def _one_thread():
    single_thread()


@pytest.fixture
def plugin_verifier():
    """The test verifier, registered here and in job workers (via the plugin variable), unregistered after."""
    module = importlib.import_module(PLUGIN)
    env = {verifiers.PLUGINS_ENV: PLUGIN,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    yield module, env
    verifiers._REGISTRY.pop(module.NAME, None)
    sys.modules.pop(PLUGIN, None)


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "eval.jsonl"
    write_eval_set(path, ROWS)
    return path


@pytest.fixture(scope="module")
def other_llama(tmp_path_factory):
    """A second tiny model (other weights, same tokenizer): the "trained" model against tiny_llama."""
    return make_tiny_llama(tmp_path_factory.mktemp("other-llama"), seed=1)


def test_parse_eval_and_its_refusals(plugin_verifier):
    module, _ = plugin_verifier
    assert parse_eval(f"verifier:{module.NAME}") == EvalSpec("verifier", module.NAME)
    spec = parse_eval("judge:gpt-4o-mini, base_url=http://127.0.0.1:8000/v1/, max_new_tokens=32, api_key_env=MY_KEY")
    assert spec == EvalSpec("judge", "gpt-4o-mini", "http://127.0.0.1:8000/v1", 32, "MY_KEY")
    assert spec.label == "judge:gpt-4o-mini" and EvalSpec.from_dict(spec.to_dict()) == spec
    assert parse_eval("reward:owner/rm@abc").target == "owner/rm@abc"
    assert parse_eval("rating:m, max_calls=20").max_calls == 20 and spec.max_calls is None
    for text, message in [("answer-match", "expected KIND:TARGET"), ("bleu:x", "unknown evaluator 'bleu'"),
                          ("judge:", "name the model"), ("verifier:no-such", "unknown verifier 'no-such'"),
                          ("judge:m,temperature=1", "unknown option"), ("judge:m,max_new_tokens=0", "at least 1"),
                          ("judge:m,api_key_env=sk-abc-123", "never put the key itself"),
                          ("judge:m,base_url=https://user:sk-secret@host/v1", "not in the URL"),
                          ("reward:rm,base_url=http://127.0.0.1/v1", "for rating and judge only"),
                          ("judge:m,max_calls=0", "positive"), ("judge:m,max_calls=ten", "whole number"),
                          ("reward:rm,max_calls=5", "for rating and judge only")]:
        with pytest.raises(MarginLensError, match=re.escape(message)):
            parse_eval(text)


def test_every_way_of_building_a_spec_refuses_credentials_in_the_url():
    """Not only parse_eval: the constructor, dataclasses.replace (the CLI's --eval-url) and from_dict (a spec
    read back) refuse a URL with a key in it, and the key is not echoed in the message."""
    bad = "https://user:sk-secret-99@host/v1"
    attempts = [lambda: EvalSpec("judge", "m", base_url=bad),
                lambda: dataclasses.replace(EvalSpec("rating", "m"), base_url=bad),
                lambda: EvalSpec.from_dict({"kind": "judge", "target": "m", "base_url": bad}),
                lambda: EvalSpec("judge", "m", base_url="http://host/v1?api_key=sk-secret-99")]
    for attempt in attempts:
        with pytest.raises(MarginLensError, match="not in the URL") as caught:
            attempt()
        assert "sk-secret-99" not in str(caught.value)
    with pytest.raises(MarginLensError, match="http"):
        EvalSpec("judge", "m", base_url="ftp://host/v1")
    assert EvalSpec("judge", "m", base_url="http://127.0.0.1:8/v1/").base_url == "http://127.0.0.1:8/v1"


def test_a_changed_rule_is_a_new_evaluation(tiny_llama, eval_file, plugin_verifier, monkeypatch):  # noqa: F811
    """The verifier's, rubric's and judge prompt's versions are in the params, so the job id changes with them."""
    from marginlens.core.audit import judge_prompt
    from marginlens.core.scoring import rating_rubric

    module, _ = plugin_verifier
    spec = parse_eval(f"verifier:{module.NAME}")

    def job_id(spec: EvalSpec) -> str:
        params = evaluation_params(str(tiny_llama), eval_file, spec, baseline_model=str(tiny_llama), device="cpu")
        return job_id_for("evaluate", params)

    before = job_id(spec)
    assert evaluator_versions(spec) == {"verifier_version": "1"} and job_id(spec) == before
    monkeypatch.setitem(verifiers._REGISTRY, module.NAME, dataclasses.replace(module.VERIFIER, version="2"))
    assert evaluator_versions(spec) == {"verifier_version": "2"} and job_id(spec) != before
    for kind, holder, name in [("judge", judge_prompt, "PROMPT_VERSION"), ("rating", rating_rubric, "RUBRIC_VERSION")]:
        llm = EvalSpec(kind, "m", base_url="http://127.0.0.1:9/v1")
        first, versions = job_id(llm), evaluator_versions(llm)
        monkeypatch.setattr(holder, name, getattr(holder, name) + "-changed")
        assert evaluator_versions(llm) != versions and job_id(llm) != first


def test_pairwise_arithmetic_and_cost():
    assert [pairwise_outcome(a, b) for a, b in [(True, True), (True, False), (False, True), (False, False),
                                                (None, True), (True, None)]] == [
        "win", "tie", "tie", "loss", None, None]
    assert evaluation_cost(parse_eval("judge:m"), n_prompts=10, n_models=3) == {
        "generations": 30, "generated_tokens": 30 * 64, "judge_requests": 60, "rating_requests": 0}
    assert evaluation_cost(parse_eval("rating:m,max_new_tokens=16"), 10, 2) == {
        "generations": 20, "generated_tokens": 320, "judge_requests": 0, "rating_requests": 20}
    assert evaluation_cost(EvalSpec("reward", "rm"), 7, 1)["judge_requests"] == 0


def test_verifier_evaluation_through_the_job(ws, tiny_llama, eval_file, plugin_verifier):  # noqa: F811
    module, env = plugin_verifier
    spec = parse_eval(f"verifier:{module.NAME},max_new_tokens=12")
    # As after a kill: the job's folder already holds two scored prompts (with a score the verifier never
    # gives), the way a killed worker leaves it. The job keeps them and scores only the other three.
    job_dir = ws.jobs_dir / job_id_for("evaluate", evaluation_params(str(tiny_llama), eval_file, spec, device="cpu"))
    stored = KeyedLog(job_dir / "results" / "evaluations.jsonl", key_of=lambda r: r["id"])
    for index in (0, 3):
        stored.append({"id": ROWS[index]["id"], "index": index, "score": 0.123, "valid": True, "truncated": False})
    job = submit_evaluation(ws, str(tiny_llama), eval_file, spec, device="cpu", env=env)
    assert job.dir == job_dir
    with pytest.raises(MarginLensError, match="not done"):
        evaluation_summary(job)
    status = job.wait(timeout=120)
    assert status.state == "done", job.log_tail()
    assert (status.done, status.total) == (10, 10)  # generation and scoring, one unit per prompt each
    summary = evaluation_summary(job)
    # The worker's responses are the generation cache's: asking again here generates nothing and gives them back.
    made = generate_responses(ws, str(tiny_llama), eval_file, GenerationParams(max_new_tokens=12), device="cpu")
    expected = [module.check(r["responses"][0], row) for r, row in zip(made, ROWS, strict=True)]
    expected[0] = expected[3] = 0.123
    assert summary.scores == pytest.approx(expected) and summary.ids == [r["id"] for r in ROWS]
    assert summary.mean == pytest.approx(sum(expected) / 5) and (summary.n, summary.invalid) == (5, 0)
    assert len(set(expected)) > 1  # the scores really differ per prompt
    assert summary.truncated == sum(r["truncated"][0] for i, r in enumerate(made) if i not in (0, 3))
    assert len(stored) == 5 and stored.get("colour")["response"] == made[1]["responses"][0]
    assert summary.evaluator == f"verifier:{module.NAME}" and summary.model == str(tiny_llama.resolve())
    assert summary.wins is None and job.result() == summary.to_dict()
    # The same inputs are the same job, returned as done.
    again = submit_evaluation(ws, str(tiny_llama), eval_file, spec, device="cpu", env=env)
    assert again.id == job.id and again.status().state == "done"
    with pytest.raises(MarginLensError, match="baseline_model"):
        submit_evaluation(ws, str(tiny_llama), eval_file, parse_eval("judge:m"))


def conversation(request: Request) -> str:
    return request.messages[-1]["content"].split("[Conversation]\n", 1)[1].split("\n[End of Conversation]", 1)[0]


def test_pairwise_judge_both_orders_through_the_job(ws, tiny_llama, other_llama, eval_file):  # noqa: F811
    params = GenerationParams(max_new_tokens=8)
    trained = {row["prompt"]: r["responses"][0] for row, r in zip(
        ROWS, generate_responses(ws, str(other_llama), eval_file, params, device="cpu"), strict=True)}
    baseline = {row["prompt"]: r["responses"][0] for row, r in zip(
        ROWS, generate_responses(ws, str(tiny_llama), eval_file, params, device="cpu"), strict=True)}
    assert all(trained[p] != baseline[p] for p in trained)
    plan = dict(zip([r["prompt"] for r in ROWS], ["win", "win", "tie", "loss", "invalid"], strict=True))

    def answer(request: Request) -> str:
        prompt = conversation(request)
        a, _ = request.pair
        a_is_trained = a == trained[prompt]
        if plan[prompt] == "tie":
            return '{"winner": "A", "rationale": "first is better"}'  # position bias: wins one order only
        return "A" if a_is_trained == (plan[prompt] == "win") else "B"

    def fault(request: Request) -> str | None:  # prose instead of a letter when the trained answer is shown first
        return "offformat" if plan[conversation(request)] == "invalid" and request.pair[0] == trained[
            conversation(request)] else None

    secret = "sk-eval-secret-0123456789"
    with ScriptedJudge(answer=answer, fault_for=fault) as judge:
        spec = EvalSpec("judge", "judge-1", base_url=judge.base_url, max_new_tokens=8, api_key_env="EVAL_JUDGE_KEY")
        job = submit_evaluation(ws, str(other_llama), eval_file, spec, baseline_model=str(tiny_llama), device="cpu",
                                env={"EVAL_JUDGE_KEY": secret})
        status = job.wait(timeout=120)
        assert status.state == "done", job.log_tail()
        assert "generating" not in job.log_tail(100)  # both models' responses came from the cache
        summary = evaluation_summary(job)
        assert (summary.wins, summary.ties, summary.losses, summary.invalid, summary.n) == (2, 1, 1, 1, 4)
        assert summary.scores == [1.0, 1.0, 0.5, 0.0, None]
        assert summary.mean == pytest.approx((2 + 1 / 2) / 4)
        # Every prompt asked exactly twice, once in each order; the key only in the request header.
        assert len(judge.requests) == 10
        for prompt in trained:
            shown = sorted(r.pair for r in judge.requests if conversation(r) == prompt)
            assert shown == sorted([(trained[prompt], baseline[prompt]), (baseline[prompt], trained[prompt])])
        assert {r.authorization for r in judge.requests} == {f"Bearer {secret}"}
        assert not any(secret in p.read_text(errors="replace") for p in job.dir.rglob("*") if p.is_file())

        # The starting model's own row: identical responses are ties, and nothing is asked.
        base_job = submit_evaluation(ws, str(tiny_llama), eval_file, spec, baseline_model=str(tiny_llama),
                                     device="cpu", env={"EVAL_JUDGE_KEY": secret})
        assert base_job.wait(timeout=120).state == "done", base_job.log_tail()
        base = evaluation_summary(base_job)
        assert (base.wins, base.ties, base.losses, base.mean) == (0, 5, 0, 0.5) and len(judge.requests) == 10

        # Every answer is stored once in the workspace: judging the same responses again asks nothing.
        evaluator = JudgeEvaluator(spec, ws.root, ws.root / "state")
        rows = [r for r in ROWS]
        again = evaluator.evaluate(rows, [trained[r["prompt"]] for r in rows], [baseline[r["prompt"]] for r in rows])
        assert [r["score"] for r in again] == summary.scores and len(judge.requests) == 10


def test_reward_model_evaluator_matches_the_reward_scorer(tiny_reward):  # noqa: F811
    from marginlens.core.scoring.models import load_reward_model
    from marginlens.core.scoring.rewards import RewardScorer

    responses = ["Five.", "Blue is a colour, and green is too.", "", "def f(): return 1", "Paris"]
    evaluator = RewardEvaluator(str(tiny_reward), "cpu")
    results = evaluator.evaluate(ROWS, responses)
    model, tokenizer, _ = load_reward_model(str(tiny_reward))
    pairs = RewardScorer(model, tokenizer).score([[{"role": "user", "content": r["prompt"]}] for r in ROWS],
                                                 responses, responses)
    assert [r["score"] for r in results] == pytest.approx([p.chosen_reward for p in pairs], abs=1e-5)
    assert all(r["valid"] for r in results) and len({round(r["score"], 6) for r in results}) == 5


def test_llm_rating_evaluator_asks_once_per_response(tmp_path):
    def answer(request: Request) -> str:
        response = request.messages[-1]["content"].split("[Response]\n", 1)[1].split("\n[End of Response]")[0]
        return "I cannot say." if "?" in response else f"Rating: {min(10, len(response))}\nFine."

    responses = ["Five.", "Blue", "Hmm?", "def f", "Paris is."]
    with ScriptedJudge(answer=answer) as rater:
        spec = parse_eval(f"rating:rater-1,base_url={rater.base_url}")
        results = RatingEvaluator(spec, tmp_path / "ws", tmp_path / "state").evaluate(ROWS, responses)
        assert [r["score"] for r in results] == [5.0, 4.0, None, 5.0, 9.0]
        assert [r["valid"] for r in results] == [True, True, False, True, True]
        assert len(rater.requests) == 5  # one per response, though the scorer rates "both sides"
        again = RatingEvaluator(spec, tmp_path / "ws", tmp_path / "state2").evaluate(ROWS, responses)
        assert again == results and len(rater.requests) == 5  # the rating scorer's cache answers
    assert not math.isnan(sum(r["score"] for r in results if r["valid"]))


def test_judge_cap_stops_the_job_and_a_resume_pays_nothing_twice(ws, tiny_llama, other_llama, eval_file):  # noqa: F811
    """max_calls=4 for 10 needed requests: the job fails saying so after 4 calls; resubmitting it asks nothing
    (its ledger holds the 4); a larger cap is another job that asks only the 6 answers not yet stored."""
    env = {"EVAL_JUDGE_KEY": "sk-cap-test-0123456789"}
    with ScriptedJudge(answer=lambda request: "A") as judge:
        def evaluate(max_calls: int):
            spec = EvalSpec("judge", "judge-cap", base_url=judge.base_url, max_new_tokens=8,
                            api_key_env="EVAL_JUDGE_KEY", max_calls=max_calls)
            job = submit_evaluation(ws, str(other_llama), eval_file, spec, baseline_model=str(tiny_llama),
                                    device="cpu", env=env)
            return job, job.wait(timeout=120)

        job, status = evaluate(4)
        assert status.state == "failed" and "call budget of 4 reached" in status.error, job.log_tail()
        assert "larger max_calls" in status.error and len(judge.requests) == 4
        again, status = evaluate(4)
        assert again.id == job.id and status.state == "failed" and len(judge.requests) == 4
        bigger, status = evaluate(10)
        assert bigger.id != job.id and status.state == "done", bigger.log_tail()
        assert len(judge.requests) == 10 and len({repr(r.messages) for r in judge.requests}) == 10
        assert evaluation_summary(bigger).n == 5


def test_rating_cap_is_passed_to_the_rater(tmp_path):
    responses = ["Five.", "Blue", "Hmm", "def f", "Paris is."]
    with ScriptedJudge(answer=lambda request: "Rating: 7") as rater:
        spec = parse_eval(f"rating:rater-cap,base_url={rater.base_url},max_calls=3")
        with pytest.raises(MarginLensError, match="call budget of 3"):
            RatingEvaluator(spec, tmp_path / "ws", tmp_path / "state").evaluate(ROWS, responses)
        assert len(rater.requests) == 3
        more = dataclasses.replace(spec, max_calls=5)
        results = RatingEvaluator(more, tmp_path / "ws", tmp_path / "state2").evaluate(ROWS, responses)
        assert [r["score"] for r in results] == [7.0] * 5 and len(rater.requests) == 5  # stored ones not re-asked
