"""LLM rating as reward (core.scoring.llm_rating) against the scripted OpenAI-compatible server: a real
score job, real HTTP, a real cache on disk. The script rates "It is 2i." (the correct sum) 8 and the
rest 3, so every margin is known in advance."""

from __future__ import annotations

import math
import re
import time

import pytest
from helpers_data import hh_records, make_dataset, standard_records
from judge_server import ScriptedJudge
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.llm_rating import LLMRatingScorer, check_base_url
from marginlens.core.scoring.rating_rubric import RUBRIC_VERSION, parse_rating, rating_messages
from marginlens.core.scoring.score_spec import ScoreSpec
from marginlens.core.scoring.score_submit import submit_scoring
from marginlens.core.scoring.score_tables import load_score_table, score_manifest
from marginlens.core.selection.margins import load_margins

KEY = "sk-rating-test-KEY-5d1e"
_RESPONSE = re.compile(r"\[Response\]\n(.*?)\n\[End of Response\]", re.DOTALL)


def rated(request) -> str:
    response = _RESPONSE.search(request.messages[-1]["content"]).group(1)
    if "perhaps" in response:
        return "I cannot say."  # off the rubric: recorded invalid
    return "Rating: 3\nWrong sum." if "I think" in response else "Rating: 8\nCorrect and brief."


def spec(dataset: str, url: str, **options) -> ScoreSpec:
    return ScoreSpec(dataset=dataset, policy=None, explicit="llm_rating", explicit_value="rater-1",
                     scorer_options={"base_url": url, **options})


def test_parse_rating_worked_example():
    assert parse_rating("Rating: 7\nClear and correct, slightly terse.") == 7.0
    assert parse_rating("8\nGood.") == 8.0 and parse_rating("**Rating:** 9") == 9.0
    assert parse_rating("Reason first.\nRating: 4/10") == 4.0 and parse_rating("Rating: 6.") == 6.0
    assert parse_rating("Rating: 12") is None and parse_rating("") is None and parse_rating("no number") is None
    assert parse_rating(" \n ") is None
    # No guessing which number is the rating, no rounding: these are stored invalid, not wrong.
    assert parse_rating("On a scale of 1 to 10 I'd give it 8") is None
    assert parse_rating("I'd give it an 8.") is None
    assert parse_rating("Rating: 7.5") is None and parse_rating("7.5\nGood.") is None
    assert RUBRIC_VERSION != "overall-1to10-v1"  # v1 ratings were parsed by the guessing parser
    messages = rating_messages([{"role": "user", "content": "Hi?"}], "Hello.")
    assert messages[0]["role"] == "system" and "User: Hi?" in messages[1]["content"]
    assert "[Response]\nHello.\n[End of Response]" in messages[1]["content"]


def test_ratings_become_a_reward_table_paid_once(ws, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    make_dataset(ws, "d", standard_records(5, seed=2), tmp_path)
    with ScriptedJudge(answer=rated) as judge:
        handle = submit_scoring(ws, spec("d", judge.base_url))
        assert handle.job.wait(timeout=120).state == "done", handle.job.log_tail()
        assert len(judge.requests) == 10  # two responses per pair
        assert {r.authorization for r in judge.requests} == {f"Bearer {KEY}"}
        assert {r.model for r in judge.requests} == {"rater-1"}

        fp = handle.fingerprints["llm_rating"]
        table = load_score_table(ws, "d", fp).to_pylist()
        assert [(r["chosen_reward"], r["rejected_reward"], r["invalid_ratings"]) for r in table] == [(8.0, 3.0, 0)] * 5
        manifest = score_manifest(ws, "d", fp)
        assert manifest["spec"]["model"] == "rater-1" and manifest["spec"]["rubric_version"] == RUBRIC_VERSION
        frame = load_margins(ws, "d", reward_fp=fp)
        assert list(frame["m_ex"]) == [5.0] * 5

        # Same responses in another dataset, another budget: the ratings are cached, nothing is asked again.
        make_dataset(ws, "d2", standard_records(5, seed=2), tmp_path)
        again = submit_scoring(ws, spec("d2", judge.base_url, max_calls=50))
        assert again.fingerprints["llm_rating"] == fp  # the fingerprint holds model and rubric, not the budget
        assert again.job.wait(timeout=120).state == "done", again.job.log_tail()
        assert len(judge.requests) == 10

    # The key reached the server and nothing on disk.
    for path in ws.root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_budget_stops_the_job_and_a_larger_one_goes_on(ws, tmp_path):
    make_dataset(ws, "d", standard_records(4, seed=3), tmp_path)
    with ScriptedJudge(answer=rated) as judge:
        small = submit_scoring(ws, spec("d", judge.base_url, max_calls=3))
        status = small.job.wait(timeout=120)
        assert status.state == "failed" and "call budget of 3 reached" in (status.error or ""), status
        assert "ratings are stored" in (status.error or "")
        assert len(judge.requests) == 3

        larger = submit_scoring(ws, spec("d", judge.base_url, max_calls=20))
        assert larger.job.wait(timeout=120).state == "done", larger.job.log_tail()
        assert len(judge.requests) == 8  # the 3 paid for are not asked again


def test_an_answer_off_the_rubric_is_recorded_not_dropped(ws, tmp_path):
    records = [{"prompt": "What is 2 plus 2?", "chosen": "4.", "rejected": "5, perhaps."}]
    make_dataset(ws, "d", records, tmp_path)
    with ScriptedJudge(answer=rated) as judge:
        handle = submit_scoring(ws, spec("d", judge.base_url))
        assert handle.job.wait(timeout=120).state == "done", handle.job.log_tail()
    row = load_score_table(ws, "d", handle.fingerprints["llm_rating"]).to_pylist()[0]
    assert row["chosen_reward"] == 8.0 and math.isnan(row["rejected_reward"]) and row["invalid_ratings"] == 1
    stored = [line for line in (ws.root / "ratings").rglob("ratings.jsonl")][0].read_text()
    assert "I cannot say." in stored and '"valid": false' in stored


def test_a_refused_key_fails_the_job_with_the_reason(ws, tmp_path):
    make_dataset(ws, "d", hh_records(2), tmp_path)
    with ScriptedJudge(answer=rated, faults=["401"]) as judge:
        handle = submit_scoring(ws, spec("d", judge.base_url))
        status = handle.job.wait(timeout=120)
    assert status.state == "failed" and "HTTP 401" in (status.error or "")


def test_bad_settings_are_refused_before_any_job(ws, tmp_path):
    with pytest.raises(MarginLensError, match="put the key in"):
        check_base_url("http://user:sk-secret@127.0.0.1:9/v1")
    with pytest.raises(MarginLensError, match="http"):
        check_base_url("127.0.0.1:8000")
    make_dataset(ws, "d", hh_records(2), tmp_path)
    with pytest.raises(MarginLensError, match="max-calls must be a positive"):
        submit_scoring(ws, spec("d", "http://127.0.0.1:9/v1", max_calls=0))
    assert LLMRatingScorer.option.flag == "--llm-rating"


def test_score_page_rates_with_a_typed_key_that_never_reaches_disk(ws, tmp_path):
    from helpers_app import app_test, no_errors

    make_dataset(ws, "d", standard_records(2, seed=2), tmp_path)
    with ScriptedJudge(answer=rated) as judge:
        at = app_test("score_page.py", ws)
        at.run()
        field = {t.label: t for t in at.text_input}
        field["Policy model (Hub id or folder)"].input("")
        at.radio[0].set_value("llm_rating")
        field["Columns or model"].input("rater-page")
        at.text_input(key="_score_rating_url").input(judge.base_url)  # "Another URL (your own key)"
        at.text_input(key="_score_rating_key").input(KEY)
        at.button[0].click().run()
        no_errors(at)
        assert at.success and "Scoring job score-" in at.success[0].value
        from marginlens.core import jobs

        (job,) = jobs.list_jobs(ws, "score")
        assert job.wait(timeout=120).state == "done", job.log_tail()
        assert {r.authorization for r in judge.requests} == {f"Bearer {KEY}"} and len(judge.requests) == 4
    for path in ws.root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_asking_holds_no_lock_another_job_would_wait_on(ws, tmp_path):
    """While another job holds the ratings store's lock (appending), this one still sends its requests."""
    import fcntl
    import os
    import threading

    from marginlens.core.scoring.scorers import PairBatch, RunOptions

    with ScriptedJudge(answer=rated) as judge:
        scorer = LLMRatingScorer.configure(spec("d", judge.base_url), "rater-1")
        scorer.setup(RunOptions(workspace=str(ws.root), state_dir=str(tmp_path)))
        row = {"prompt": [{"role": "user", "content": "1+1?"}], "chosen": "It is 2i.", "rejected": "I think 3."}
        scorer.store.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(scorer.store.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # the other job
        out = []
        worker = threading.Thread(target=lambda: out.extend(scorer.compute(PairBatch(["p"], [row], [row]))))
        worker.start()
        deadline = time.monotonic() + 30
        while not judge.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        sent_while_locked = len(judge.requests)
        os.close(fd)
        worker.join(timeout=60)
    assert sent_while_locked >= 1
    assert out == [{"chosen_reward": 8.0, "rejected_reward": 3.0, "invalid_ratings": 0}]
    assert len(scorer.store) == 2


def test_rating_in_several_processes_is_refused(ws, tmp_path, monkeypatch, capsys):
    from marginlens.core.cli import main
    from marginlens.core.scoring.scorers import RunOptions

    make_dataset(ws, "d", hh_records(2), tmp_path)
    code = main(["score", "d", "--workspace", str(ws.root), "--policy", "none", "--llm-rating", "rater-1",
                 "--processes", "2"])
    assert code == 2 and "without --processes" in capsys.readouterr().err
    # A job launched in several processes anyway (the API) stops before its first request.
    monkeypatch.setenv("WORLD_SIZE", "2")
    scorer = LLMRatingScorer.configure(spec("d", "http://127.0.0.1:9/v1"), "rater-1")
    with pytest.raises(MarginLensError, match="one process"):
        scorer.setup(RunOptions(workspace=str(ws.root), state_dir=str(tmp_path)))


def test_one_model_name_at_two_servers_is_two_raters(ws, tmp_path):
    make_dataset(ws, "d", standard_records(2, seed=2), tmp_path)
    with ScriptedJudge(answer=rated) as first, ScriptedJudge(answer=lambda r: "Rating: 5") as second:
        one = submit_scoring(ws, spec("d", first.base_url))
        assert one.job.wait(timeout=120).state == "done", one.job.log_tail()
        two = submit_scoring(ws, spec("d", second.base_url))
        assert two.fingerprints["llm_rating"] != one.fingerprints["llm_rating"]
        assert two.job is not None and two.job.wait(timeout=120).state == "done", two.job.log_tail()
        assert len(first.requests) == 4 and len(second.requests) == 4
    rows = load_score_table(ws, "d", two.fingerprints["llm_rating"]).to_pylist()
    assert [(r["chosen_reward"], r["rejected_reward"]) for r in rows] == [(5.0, 5.0)] * 2
    assert len(list((ws.root / "ratings").iterdir())) == 2


def test_score_page_resume_hands_the_typed_key_to_the_worker(ws, tmp_path, monkeypatch):
    from helpers_app import app_test, no_errors
    from marginlens.core import jobs

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    make_dataset(ws, "d", standard_records(2, seed=2), tmp_path)
    with ScriptedJudge(answer=rated, faults=["401"]) as judge:  # the first run fails: the server refused once
        at = app_test("score_page.py", ws)
        at.run()
        field = {t.label: t for t in at.text_input}
        field["Policy model (Hub id or folder)"].input("")
        at.radio[0].set_value("llm_rating")
        field["Columns or model"].input("rater-resume")
        at.text_input(key="_score_rating_url").input(judge.base_url)  # "Another URL (your own key)"
        at.text_input(key="_score_rating_key").input(KEY)
        at.button[0].click().run()
        (job,) = jobs.list_jobs(ws, "score")
        assert job.wait(timeout=120).state == "failed"
        at.run()
        at.button(key=f"_job_resume_{job.id}").click().run()
        no_errors(at)
        assert job.wait(timeout=120).state == "done", job.log_tail()
        assert {r.authorization for r in judge.requests} == {f"Bearer {KEY}"} and len(judge.requests) == 5
