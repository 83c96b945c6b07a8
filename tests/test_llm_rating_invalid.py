"""An LLM rater that answers off the rubric ("A"/"B", a pairwise judge's answer) against the scripted
OpenAI-compatible server: a real score job, real HTTP. The job counts valid and invalid ratings while it
runs and at the end, fails when most are invalid with two raw answers quoted and the way to ask again,
keeps its table, and `info` and the margin-source sentence say that a rating table exists, and how many
of its ratings are valid, instead of "no reward table has been scored"."""

from __future__ import annotations

import re
import threading

from helpers_data import make_dataset, standard_records, wait_until
from judge_server import ScriptedJudge
from marginlens.core import jobs
from marginlens.core.cli import main
from marginlens.core.job_status import details, progress_line
from marginlens.core.scoring.score_spec import ScoreSpec
from marginlens.core.scoring.score_submit import submit_scoring
from marginlens.core.scoring.score_tables import load_score_table
from marginlens.core.selection.margin_sources import dataset_margin_sources

_RESPONSE = re.compile(r"\[Response\]\n(.*?)\n\[End of Response\]", re.DOTALL)


def letters(request) -> str:
    """A pairwise judge's answer, never a rating: "A" for a chosen response, "B\\n" for a rejected one."""
    response = _RESPONSE.search(request.messages[-1]["content"]).group(1)
    return "B\n" if "I think" in response else "A"


def spec(dataset: str, url: str) -> ScoreSpec:
    return ScoreSpec(dataset=dataset, policy=None, explicit="llm_rating", explicit_value="rater-ab",
                     scorer_options={"base_url": url})


def test_counts_live_and_fails_with_two_raw_answers_and_the_reask(ws, tmp_path):
    make_dataset(ws, "d", standard_records(10, seed=2, scores=False), tmp_path)
    release = threading.Event()

    def held(request) -> str:  # the second batch (pairs 9-10) waits until the test has read the first's count
        if len(judge.requests) > 16:
            release.wait(120)
        return letters(request)

    with ScriptedJudge(answer=held) as judge:
        handle = submit_scoring(ws, spec("d", judge.base_url))
        job = handle.job
        live = wait_until(lambda: (s := job.status()).extra.get("ratings_invalid") == 16 and s, "the first batch's count")
        release.set()
        # what the CLI's follow line and the job panel show while it runs
        assert live.live and live.extra["ratings_valid"] == 0 and live.done == 8
        assert "0 of 16 ratings valid" in details("score", live)
        status = job.wait(timeout=120)

    # mostly invalid: failed, the table kept, the final counts, two raw answers escaped, the re-ask
    assert status.state == "failed", job.log_tail()
    assert status.extra["ratings_valid"] == 0 and status.extra["ratings_invalid"] == 20
    assert "0 of 20 ratings valid" in details("score", status) and "10 / 10" in progress_line(status, "pairs")
    message = status.message
    assert "20 of 20 ratings are invalid" in message
    assert "'A'" in message and "'B\\n'" in message  # quoted as written, the newline escaped
    assert "--llm-rating OTHER_MODEL" in message and f"--rating-url {judge.base_url}" in message
    fp = handle.fingerprints["llm_rating"]
    assert load_score_table(ws, "d", fp).num_rows == 10

    note = dataset_margin_sources(ws, "d").note
    assert note is not None and "a rating table exists" in note and "0 of 20 ratings valid" in note
    assert fp in note and "no reward table has been scored" not in note


def test_cli_says_it_and_info_names_the_table(ws, tmp_path, capsys):
    make_dataset(ws, "d", standard_records(6, seed=3, scores=False), tmp_path)
    with ScriptedJudge(answer=letters) as judge:
        code = main(["score", "d", "--workspace", str(ws.root), "--sample", "4", "--policy", "none",
                     "--llm-rating", "rater-ab", "--rating-url", judge.base_url])
    out = capsys.readouterr()
    assert code == 1, out
    assert "0 of 8 ratings valid" in out.err  # the follow line's last state
    assert "8 of 8 ratings are invalid" in out.err and "'A'" in out.err and "--llm-rating OTHER_MODEL" in out.err
    assert "\ndone\n" not in f"\n{out.out}"

    assert main(["info", "d", "--workspace", str(ws.root)]) == 0
    info = capsys.readouterr().out
    assert "a rating table exists" in info and "0 of 8 ratings valid" in info
    assert "no reward table has been scored" not in info

    from helpers_app import app_test

    at = app_test("score_page.py", ws)  # the Score page: the failed job's panel, and the margin-source sentence
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert [e.value for e in at.error] and all("8 of 8 ratings are invalid" in e.value for e in at.error)
    assert any("0 of 8 ratings valid" in t.value for t in at.text)  # the panel's figures (core.job_status.details)
    notes = [i.value for i in at.info if i.value.startswith("No usable explicit margin")]
    assert len(notes) == 1 and "a rating table exists" in notes[0] and "0 of 8 ratings valid" in notes[0]


def test_a_mostly_valid_job_is_done_with_its_counts_in_the_result(ws, tmp_path):
    def one_off(request) -> str:  # pair 0's rejected answer alone is off the rubric
        response = _RESPONSE.search(request.messages[-1]["content"]).group(1)
        if response.startswith("It is ") and "I think" in response and "what is 0 " in request.messages[-1]["content"]:
            return "B"
        return "Rating: 3" if "I think" in response else "Rating: 8"

    make_dataset(ws, "d", standard_records(5, seed=2, scores=False), tmp_path)
    with ScriptedJudge(answer=one_off) as judge:
        handle = submit_scoring(ws, spec("d", judge.base_url))
        status = handle.job.wait(timeout=120)
    assert status.state == "done", handle.job.log_tail()
    assert status.extra["ratings_valid"] == 9 and status.extra["ratings_invalid"] == 1
    (job,) = jobs.list_jobs(ws, "score")
    assert job.result()["counts"]["llm_rating"] == {"ratings_valid": 9, "ratings_invalid": 1}
    assert dataset_margin_sources(ws, "d").note is None  # four pairs have a margin
