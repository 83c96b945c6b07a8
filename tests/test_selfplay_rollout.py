"""The self-play rollout job on a tiny Llama: n sampled answers per prompt, annotated by a throwaway verifier
that sees each answer's siblings, paired best vs worst, with the policy's SimPO margin; a kill -9 in the
annotation, or in the implicit margins, and a resubmission end with the bytes of an uninterrupted run. And the self-consistency verifier on
hand rows."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from marginlens.core.atomic import read_json
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments import verifiers
from marginlens.core.experiments.evaluators import parse_eval
from marginlens.core.experiments.generation import GenerationParams, generate_responses, user_messages
from marginlens.core.job_status import JobState
from marginlens.core.jobs import Job
from marginlens.core.selfplay.prompt_pool import write_pool
from marginlens.core.selfplay.rollout_job import (
    PAIRS_FILE,
    SAMPLING,
    SUMMARY_FILE,
    UNPAIRED_FILE,
    best_and_worst,
    pairs_path,
    rollout_params,
    rollout_summary,
    submit_rollout,
)
from marginlens.core.workspace import Workspace
from tiny_models import single_thread, tiny_llama  # noqa: F401  (session fixture)

single_thread()

VERIFIER = "rollout-test"
_MODULE = "rollout_test_verifier"
SLEEP_ENV = "ROLLOUT_TEST_SLEEP"
# The share of digit characters (rounded: equal in every process); 0.5 for a prompt marked [tie]; and it
# refuses a row whose "samples" do not hold the answer it scores, so the job must hand it the siblings.
_PLUGIN = f'''
import os
import time

from marginlens.core.experiments.verifiers import Verifier, register_verifier


def _check(response, row):
    if response not in row["samples"] or len(row["samples"]) != 3:
        raise ValueError("the row does not carry this answer's siblings")
    time.sleep(float(os.environ.get({SLEEP_ENV!r}, "0")))
    if "[tie]" in row["prompt"]:
        return 0.5
    return round(sum(ch.isdigit() for ch in response) / max(1, len(response)), 6)


register_verifier(Verifier({VERIFIER!r}, "1", "test only: share of digits", _check, needs=("samples",)))
'''
PARAMS = GenerationParams(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=1.0, seed=3, n=3, batch_size=4)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rollout-plugin")
    (folder / f"{_MODULE}.py").write_text(_PLUGIN, encoding="utf-8")
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", verifiers.PLUGINS_ENV)}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), saved["PYTHONPATH"]) if p)
    os.environ[verifiers.PLUGINS_ENV] = _MODULE
    sys.path.insert(0, str(folder))
    importlib.import_module(_MODULE)
    yield VERIFIER
    verifiers._REGISTRY.pop(VERIFIER, None)
    sys.modules.pop(_MODULE, None)
    sys.path.remove(str(folder))
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pool_rows(n: int = 10) -> list[dict]:
    rows = []
    for i in range(n):
        prompt = f"What is {i} plus {i + 2}? Write the number {i}{i}." + (" [tie]" if i == 3 else "")
        rows.append({"id": f"s{i}", "prompt": prompt, "answer": str(2 * i + 2), "task": "arithmetic",
                     "parent": None, "strategy": None, "iteration": 0, "root": f"s{i}"})
    # a rewrite: no answer of its own, lineage back to its seed
    rows.append({"id": "s1>deepen", "prompt": "Add one and three, then double it: what is the number 13?",
                 "parent": "s1", "strategy": "deepen@1", "iteration": 1, "root": "s1"})
    return rows


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rollout-pool") / "pool.jsonl"
    write_pool(path, pool_rows())
    return path


def _kill_when(job: Job, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert job.status().live, job.log_tail(30)
        assert time.monotonic() < deadline, job.log_tail(30)
        time.sleep(0.02)
    pid = (read_json(job.dir / "status.json") or {})["pid"]
    os.kill(int(pid), signal.SIGKILL)
    while job.is_alive():
        assert time.monotonic() < deadline, f"{job.id} still alive after SIGKILL"
        time.sleep(0.05)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def rolled(plugin, pool, tiny_llama, tmp_path_factory):  # noqa: F811
    """An uninterrupted rollout, and one killed -9 after the first annotation chunk, then resubmitted."""
    annotator = parse_eval(f"verifier:{plugin}")
    root = tmp_path_factory.mktemp("rollout-ws")
    plain = submit_rollout(Workspace(root / "plain"), str(tiny_llama), pool, annotator, params=PARAMS, device="cpu")
    assert plain.wait(poll=0.2, timeout=300).state is JobState.DONE, plain.log_tail(40)

    ws = Workspace(root / "killed")
    slow = {SLEEP_ENV: "0.15"}  # the worker's environment only: not in the job id
    job = submit_rollout(ws, str(tiny_llama), pool, annotator, params=PARAMS, device="cpu", env=slow)
    assert job.id == plain.id
    annotations = job.results_dir / "annotations.jsonl"
    _kill_when(job, lambda: _lines(annotations) >= 8)  # the first chunk of 8 prompts stored, the second under way
    assert job.status().state is JobState.INTERRUPTED
    stored = _lines(annotations)
    assert 8 <= stored < 11 and not pairs_path(job).exists()
    again = submit_rollout(ws, str(tiny_llama), pool, annotator, params=PARAMS, device="cpu")
    assert again.id == job.id
    assert job.wait(poll=0.2, timeout=300).state is JobState.DONE, job.log_tail(40)
    return plain, job, ws, stored


def test_kill_9_then_resubmit_gives_the_bytes_of_an_uninterrupted_run(rolled):
    plain, job, ws, stored = rolled
    assert pairs_path(job).read_bytes() == pairs_path(plain).read_bytes()
    for name in ("unpaired.jsonl", "summary.json"):
        assert (job.results_dir / name).read_bytes() == (plain.results_dir / name).read_bytes()
    # the resumed worker sampled nothing again (the generation cache) and annotated only the missing prompts
    log = job.log_path.read_text()
    assert log.count("generating 11 of 11 prompts") == 1 and "generating" not in log.split("annotating")[-1]
    assert f"annotating {11 - stored} of 11 prompts" in log or stored == 11
    assert _lines(job.results_dir / "annotations.jsonl") == 11


def _step(job: Job) -> str | None:
    return ((read_json(job.dir / "status.json") or {}).get("extra") or {}).get("step")


@pytest.fixture(scope="module")
def killed_in_margins(rolled, plugin, pool, tiny_llama, tmp_path_factory):  # noqa: F811
    """A rollout killed -9 in its last step (the implicit margins: samples and annotations all stored), then
    resubmitted. That step is short on a tiny model (a model load and a few forward passes), so a run that
    finishes before the poll sees it is retried in a fresh workspace."""
    annotator = parse_eval(f"verifier:{plugin}")
    root = tmp_path_factory.mktemp("rollout-late")
    for attempt in range(3):
        ws = Workspace(root / f"try{attempt}")
        job = submit_rollout(ws, str(tiny_llama), pool, annotator, params=PARAMS, device="cpu")
        deadline = time.monotonic() + 300
        while job.status().live and _step(job) != "implicit margins":
            assert time.monotonic() < deadline, job.log_tail(30)
            time.sleep(0.005)
        status = read_json(job.dir / "status.json") or {}
        if _step(job) != "implicit margins" or not job.status().live:
            continue  # done before the poll saw the step: try again
        os.kill(int(status["pid"]), signal.SIGKILL)
        while job.is_alive():
            assert time.monotonic() < deadline, f"{job.id} still alive after SIGKILL"
            time.sleep(0.05)
        if pairs_path(job).exists():
            continue  # killed after writing its results after all
        break
    else:
        pytest.fail("the rollout finished before its implicit-margin step could be interrupted, three times")
    assert job.status().state is JobState.INTERRUPTED
    assert _lines(job.results_dir / "annotations.jsonl") == 11  # everything before the margins was stored
    again = submit_rollout(ws, str(tiny_llama), pool, annotator, params=PARAMS, device="cpu")
    assert again.id == job.id
    assert job.wait(poll=0.2, timeout=300).state is JobState.DONE, job.log_tail(40)
    return rolled[0], job


def test_kill_9_in_the_implicit_margins_then_resubmit_gives_the_same_bytes(killed_in_margins):
    plain, job = killed_in_margins
    for name in (PAIRS_FILE, UNPAIRED_FILE, SUMMARY_FILE):
        assert (job.results_dir / name).read_bytes() == (plain.results_dir / name).read_bytes(), name
    # the resumed worker neither sampled nor annotated again: only the margins were left to do
    log = job.log_path.read_text()
    assert log.count("rollout of ") == 2, log
    resumed = log.split("rollout of ")[-1]
    assert "generating" not in resumed and "annotating" not in resumed, resumed
    assert log.count("generating 11 of 11 prompts") == 1 and log.count("annotating 11 of 11 prompts") == 1


def test_pairs_are_best_vs_worst_with_lineage_and_ties_recorded(rolled, pool, tiny_llama):  # noqa: F811
    plain, job, ws, _ = rolled
    made = {r["id"]: r["responses"] for r in generate_responses(ws, str(tiny_llama), pool, PARAMS, device="cpu")}
    pairs = [json.loads(line) for line in pairs_path(job).read_text().splitlines()]
    unpaired = [json.loads(line) for line in (job.results_dir / "unpaired.jsonl").read_text().splitlines()]
    rows = {r["id"]: r for r in pool_rows()}
    assert [p["id"] for p in pairs] == [r for r in rows if r in {p["id"] for p in pairs}]  # pool order
    assert {p["id"] for p in pairs} | {u["id"] for u in unpaired} == set(rows)
    assert len(pairs) >= 3, unpaired  # 6 with this seed
    for pair in pairs:
        answers = made[pair["id"]]
        digits = [round(sum(c.isdigit() for c in a) / max(1, len(a)), 6) for a in answers]
        assert pair["rewards"] == digits
        best, worst = digits.index(max(digits)), digits.index(min(digits))
        assert (pair["chosen"], pair["rejected"]) == (answers[best], answers[worst])
        assert pair["score_chosen"] == max(digits) and pair["score_rejected"] == min(digits)
        assert pair["m_ex"] == pytest.approx(max(digits) - min(digits)) and pair["m_ex"] > 0
        row = rows[pair["id"]]
        assert pair["prompt"] == row["prompt"]
        assert {k: pair[k] for k in ("parent", "strategy", "iteration", "root")} == {
            k: row[k] for k in ("parent", "strategy", "iteration", "root")}
        assert pair.get("answer") == row.get("answer") and pair.get("task") == row.get("task")
    tie = next(u for u in unpaired if u["id"] == "s3")
    assert tie["reason"] == "tie" and tie["rewards"] == [0.5, 0.5, 0.5] and tie["responses"] == made["s3"]
    summary = rollout_summary(job)
    assert summary == {"prompts": 11, "answers": 33, "pairs": len(pairs), "invalid": 0,
                       "ties": len(unpaired), "truncated": summary["truncated"]}
    assert 0 < summary["truncated"] <= 33  # an untrained model mostly runs to the cap
    assert job.result() == summary


def test_implicit_margin_is_the_implicit_scorers(rolled, tiny_llama):  # noqa: F811
    from marginlens.core.scoring.logprobs import ImplicitScorer
    from marginlens.core.scoring.models import load_causal_lm
    from marginlens.core.selection.margins import simpo_margin

    _, job, _, _ = rolled
    pairs = [json.loads(line) for line in pairs_path(job).read_text().splitlines()]
    model, tokenizer, _ = load_causal_lm(str(tiny_llama), device="cpu", dtype="float32")
    scorer = ImplicitScorer(model, tokenizer)
    for pair in pairs:
        (own,) = scorer.score([user_messages(pair)], [pair["chosen"]], [pair["rejected"]])
        assert pair["chosen_ntok"] == own.chosen_ntok and pair["rejected_ntok"] == own.rejected_ntok
        assert pair["chosen_logp"] == pytest.approx(own.chosen_logp, rel=1e-5)
        assert pair["rejected_logp"] == pytest.approx(own.rejected_logp, rel=1e-5)
        expected = float(simpo_margin(own.chosen_logp, own.chosen_ntok, own.rejected_logp, own.rejected_ntok))
        assert pair["m_im"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_the_job_id_hashes_what_the_pairs_depend_on(plugin, pool, tiny_llama, tmp_path):  # noqa: F811
    from marginlens.core.jobs import job_id_for

    annotator = parse_eval(f"verifier:{plugin}")

    def job_id(prompts: Path = pool, **changes) -> str:
        options = {"params": PARAMS, "device": "cpu", "backend": "auto", **changes}
        return job_id_for("rollout", rollout_params(str(tiny_llama), prompts, annotator, **options))

    base = job_id()
    assert rollout_params(str(tiny_llama), pool, annotator, params=PARAMS, device="cpu")["backend"] == "transformers"
    assert job_id(params=GenerationParams(**{**PARAMS.__dict__, "seed": 4})) != base
    assert job_id(dtype="bfloat16") != base
    other = tmp_path / "pool.jsonl"
    write_pool(other, pool_rows()[:-1])
    assert job_id(prompts=other) != base
    write_pool(other, pool_rows())  # the same content at another path: its fingerprint is the pool's
    assert rollout_params(str(tiny_llama), other, annotator, params=PARAMS, device="cpu")["prompts_fingerprint"] == \
        rollout_params(str(tiny_llama), pool, annotator, params=PARAMS, device="cpu")["prompts_fingerprint"]
    consistency = rollout_params(str(tiny_llama), pool, parse_eval("verifier:self-consistency"), params=PARAMS, device="cpu")
    assert consistency["versions"] == {"verifier_version": "1"} and consistency["annotator"]["target"] == "self-consistency"


@pytest.mark.parametrize(("eval_text", "changes", "match"), [
    ("judge:gpt-4o-mini", {}, "pairwise judge"),
    (None, {"params": GenerationParams(n=1, do_sample=True)}, "at least 2"),
    (None, {"params": GenerationParams(n=3)}, "greedy"),
    (None, {"backend": "ollama"}, "unknown sampling backend"),
    (None, {"backend": "vllm"}, "CUDA GPU"),
])
def test_bad_requests_are_refused_before_a_job_starts(plugin, pool, tiny_llama, eval_text, changes, match):  # noqa: F811
    annotator = parse_eval(eval_text or f"verifier:{plugin}")
    with pytest.raises(MarginLensError, match=match):
        rollout_params(str(tiny_llama), pool, annotator, **{"params": PARAMS, "device": "cpu", **changes})


def test_default_sampling_is_the_contracts():
    assert SAMPLING == GenerationParams(max_new_tokens=128, do_sample=True, temperature=0.8, top_p=0.95, seed=42,
                                        n=5, batch_size=4)


@pytest.mark.parametrize(("rewards", "texts", "expected"), [
    ([0.2, 0.9, None, 0.9, 0.1], list("abcde"), (1, 4)),  # first index of the max, first of the min
    ([0.3, float("nan"), 0.3, 0.7], list("abcd"), (3, 0)),
    ([None, 0.5, None], list("abc"), "invalid"),
    ([None, None], list("ab"), "invalid"),
    ([0.5, 0.5, 0.5], list("abc"), "tie"),
    ([0.0, 1.0], ["same", "same"], "tie"),
])
def test_best_and_worst(rewards, texts, expected):
    pick = best_and_worst(rewards, texts)
    assert (pick[0] if isinstance(expected, str) else pick) == expected


# ------------------------------------------------------------------------------------------------
# self-consistency
# ------------------------------------------------------------------------------------------------
def vote(response: str, samples: list[str], prompt: str = "What is 2 plus 3?") -> float:
    return verifiers.get_verifier("self-consistency").score(response, {"id": "q", "prompt": prompt, "samples": samples})


def test_self_consistency_is_registered_reference_free_and_versioned():
    verifier = verifiers.get_verifier("self-consistency")
    assert "self-consistency" in verifiers.verifier_names()
    assert verifier.version == "1" and verifier.needs == ("samples",)
    with pytest.raises(MarginLensError, match="needs the field"):
        verifier.score("5", {"id": "q", "prompt": "What is 2 plus 3?", "answer": "5"})
    with pytest.raises(MarginLensError, match="row id 'q', field 'samples'"):
        verifier.score("5", {"id": "q", "prompt": "What is 2 plus 3?", "samples": "5"})


@pytest.mark.parametrize(("response", "samples", "expected"), [
    ("It is 5.", ["It is 5.", "2 + 3 = 5", "The answer is 6", "five"], 0.75),  # 5 claimed thrice (words count)
    ("The answer is 6", ["It is 5.", "2 + 3 = 5", "The answer is 6", "five"], 0.25),
    ("No idea.", ["It is 5.", "5", "No idea."], 0.0),  # claims nothing
    ("6", ["6", "5", "5", "6"], 0.5),
    ("2 plus 3 is 5", ["2 plus 3 is 5", "I think 2 and 3 make 7", "7"], 1 / 3),  # restated operands are no claim
    ("7", ["2 plus 3 is 5", "I think 2 and 3 make 7", "7"], 2 / 3),
    ("Nothing", ["Nothing", "no number here"], 0.0),
    ("5", [], 0.0),
])
def test_self_consistency_on_hand_rows(response, samples, expected):
    assert vote(response, samples) == pytest.approx(expected)
