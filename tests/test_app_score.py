"""Score: a real scoring job (tiny Llama through from_pretrained, a real worker process) submitted,
cancelled, resumed and listed through the page, and the page's logic directly."""

from __future__ import annotations

import time

import pytest
from helpers_app import DATASET, app_test, build_workspace, no_errors, serve_config
from marginlens.app import score_form
from marginlens.core import jobs
from marginlens.core.errors import MarginLensError
from marginlens.core.job_status import JobState, JobStatus, details, progress_line
from marginlens.core.scoring.score_tables import list_score_tables
from tiny_models import tiny_llama  # noqa: F401  (session fixture)


@pytest.fixture
def ws(tmp_path):
    # enough pairs (seconds of scoring, not a fraction of one) that the Cancel click lands while the job runs,
    # even when the worker starts fast
    return build_workspace(tmp_path / "workspace", n=1500)


def score_jobs(ws):
    return jobs.list_jobs(ws, "score")


def wait_state(job: jobs.Job, states: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.status()
        if status.state in states:
            return status
        time.sleep(0.2)
    raise AssertionError(f"job stayed {job.status().state}; log:\n{job.log_tail()}")


def device(at):
    return next(s for s in at.selectbox if s.label == "Device")


def start(at):
    next(b for b in at.button if b.label == "Start scoring").click().run()


def test_submit_cancel_resume_and_list_tables(ws, tiny_llama, tmp_path, monkeypatch):  # noqa: F811
    serve_config(monkeypatch, tmp_path / "serve", data_roots=[tiny_llama])  # the model folder is a server path
    at = app_test("score_page.py", ws)
    at.run()
    no_errors(at)
    at.text_input(key="_score_policy").input(str(tiny_llama))
    device(at).set_value("cpu")
    start(at)
    no_errors(at)
    assert at.success and "Scoring job score-" in at.success[0].value
    (job,) = score_jobs(ws)
    assert job.spec["params"]["tasks"][0]["model"] == str(tiny_llama.resolve())

    # a second tab (a fresh session) sees the same job, and submitting again joins it
    other = app_test("score_page.py", ws)
    other.run()
    assert any(job.id in el.value for el in other.markdown)
    other.text_input(key="_score_policy").input(str(tiny_llama))
    device(other).set_value("cpu")
    start(other)
    assert len(score_jobs(ws)) == 1

    # cancel from the page; the worker stops at its next check
    at.run()
    cancel = [b for b in at.button if b.label == "Cancel"]
    assert cancel, "no Cancel button while the job runs"
    cancel[0].click().run()
    # the worker still imports torch and loads the model when the flag lands: it stops at its first check
    assert wait_state(job, ("cancelled", "done")).state == "cancelled"
    at.run()
    assert any(el.value.startswith("**cancelled**") for el in at.markdown)
    resume = [b for b in at.button if b.label == "Resume"]
    assert resume, "no Resume button for a cancelled job"
    resume[0].click().run()
    no_errors(at)
    assert wait_state(job, ("done", "failed")).state == "done", job.log_tail()
    at.run()
    no_errors(at)
    tables = list_score_tables(ws, DATASET, "logprob")
    fps = {t["fingerprint"] for t in tables}
    assert job.result()["tables"]["policy"] in fps
    listed = at.dataframe[-1].value
    assert job.result()["tables"]["policy"] in set(listed["fingerprint"])
    assert any(el.value.startswith("**done**") for el in at.markdown)


def test_spec_from_form_values():
    spec = score_form.build_spec(DATASET, " HuggingFaceTB/SmolLM2-135M-Instruct ", "", "columns", "", "cpu", 512, 256,
                              "reference")
    assert spec.policy == "HuggingFaceTB/SmolLM2-135M-Instruct" and spec.reference is None
    assert (spec.explicit, spec.explicit_value) == ("columns", "score_chosen,score_rejected")  # the default columns
    assert (spec.max_length, spec.max_prompt_length, spec.mode) == (512, 256, "reference")
    rm = score_form.build_spec(DATASET, "", "ref", "reward_model", "/models/rm", "auto", 2048, 1800, "clean")
    assert rm.policy is None and (rm.explicit, rm.explicit_value) == ("reward_model", "/models/rm")
    assert score_form.build_spec(DATASET, "p", "", "dataset", "", "cpu", 2048, 1800, "clean").explicit is None
    with pytest.raises(MarginLensError, match="reward model id"):
        score_form.build_spec(DATASET, "p", "", "reward_model", " ", "cpu", 2048, 1800, "clean")


def test_a_model_folder_outside_the_data_roots_is_refused(ws, tiny_llama, tmp_path, monkeypatch):  # noqa: F811
    serve_config(monkeypatch, tmp_path / "serve")  # no data root: a folder outside the workspace is no model
    at = app_test("score_page.py", ws)
    at.run()
    for field in ("_score_policy", "_score_reference"):
        at.text_input(key="_score_policy").input("")
        at.text_input(key=field).input(str(tiny_llama))
        start(at)
        assert any("reads no server paths" in e.value for e in at.error), [e.value for e in at.error]
    at.text_input(key="_score_reference").input("")
    at.radio[0].set_value("reward_model")
    at.text_input(key="_score_explicit_value").input("../../../etc")
    start(at)
    assert any("reads no server paths" in e.value for e in at.error), [e.value for e in at.error]
    assert not score_jobs(ws)


def test_progress_text():
    """What a scoring job's panel shows: core.job_status's progress line, then the scoring figures."""
    status = JobStatus(JobState.RUNNING, done=1500, total=10000, eta_s=3725.0,
                       extra={"tokens_per_s": 2345.6, "task": "policy"})
    assert f"{progress_line(status, 'pairs')} · {details('score', status)}" == \
        "1,500 / 10,000 pairs · ETA 01:02:05 · 2,346 tokens/s · policy"
    assert "— tokens/s" in details("score", JobStatus(JobState.RUNNING, extra={"tokens_per_s": None}))
