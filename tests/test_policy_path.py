"""Issue 12, point 4: a relative --policy path. The job spec stores the folder's absolute path, so a resume
started from another folder finds the model, and one folder typed two ways is one fingerprint (scored once)."""

from __future__ import annotations

import shutil

from helpers_data import make_dataset
from marginlens.core import jobs
from marginlens.core.scoring.score_spec import ScoreJobParams, ScoreSpec, plan_tasks
from tiny_models import conversational_records, single_thread, tiny_llama  # noqa: F401

single_thread()


def test_relative_policy_is_stored_absolute_and_resumes_from_elsewhere(ws, tmp_path, monkeypatch, tiny_llama):  # noqa: F811
    make_dataset(ws, "d", conversational_records(6, seed=4), tmp_path)
    here = tmp_path / "here"
    shutil.copytree(tiny_llama, here / "tiny")
    monkeypatch.chdir(here)
    spellings = ["tiny", "./tiny/", str(here / "tiny"), "../here/tiny"]
    planned = [plan_tasks(ScoreSpec("d", policy=p, device="cpu"))[0] for p in spellings]
    assert len({t.fingerprint for t in planned}) == 1  # one folder, one table
    assert {t.scorer.model for t in planned} == {str((here / "tiny").resolve())}
    params = ScoreJobParams.for_tasks(ScoreSpec("d", policy="tiny", device="cpu"),
                                      ws.dataset_manifest("d").get("fingerprint"), [planned[0]]).to_json()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # `jobs resume` run from another folder: the worker starts here
    job = jobs.submit(ws, "score", params)
    assert job.spec["params"]["tasks"][0]["model"] == str((here / "tiny").resolve())
    status = job.wait(timeout=120)
    assert status.state == "done", job.log_tail()
    assert status.done == 6
