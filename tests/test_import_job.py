"""Dataset import and Hub push as background jobs (real worker processes, real files): an import job
imports and reports, every request is a job of its own, a cancelled import switches
nothing in, and a push job runs through the export code (offline here, so it fails the way a user sees)."""

from __future__ import annotations

import json

import pytest
from helpers_app import records
from marginlens.core import jobs
from marginlens.core.data.import_job import import_spec, submit_import
from marginlens.core.errors import MarginLensError
from marginlens.core.job_status import JobState
from marginlens.core.selection.push_job import submit_push


def write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_import_job_imports_and_reports(ws, tmp_path):
    source = tmp_path / "prefs.jsonl"
    write(source, [*records(30), {"prompt": "no answers"}])
    job = submit_import(ws, import_spec(source, "prefs", policy="skip"))
    status = job.wait(poll=0.1, timeout=60)
    assert status.state is JobState.DONE, job.log_tail()
    assert (status.done, status.total) == (31, 31)
    result = job.result()
    assert (result["name"], result["imported"], result["rows_read"], result["rejected"]) == \
        ("prefs", 30, 31, {"missing_column": 1})
    assert "prefs: imported 30 of 31 rows" in result["summary"]
    assert ws.load_pairs("prefs").num_rows == 30

    # every request is a job of its own: the same file again is a no-op import, a changed file re-imports
    same = submit_import(ws, import_spec(source, "prefs", policy="skip"))
    assert same.id != job.id and same.wait(poll=0.1, timeout=60).state is JobState.DONE, same.log_tail()
    assert "no-op" in same.result()["summary"]
    write(source, records(40))
    again = submit_import(ws, import_spec(source, "prefs", policy="skip", replace=True))
    assert again.wait(poll=0.1, timeout=60).state is JobState.DONE, again.log_tail()
    assert ws.load_pairs("prefs").num_rows == 40


def test_importing_a_file_again_after_another_replaced_it_imports_it_again(ws, tmp_path):
    """X, then Y in its place, then X again: the dataset is X's pairs (a finished job must not stand in)."""
    x, y = tmp_path / "x.jsonl", tmp_path / "y.jsonl"
    write(x, records(7))
    write(y, records(9, seed=1))
    for source in (x, y, x):
        job = submit_import(ws, import_spec(source, "prefs", replace=True))
        assert job.wait(poll=0.1, timeout=60).state is JobState.DONE, job.log_tail()
    assert ws.load_pairs("prefs").num_rows == 7 and ws.dataset_manifest("prefs")["source"] == str(x)


def test_a_cancelled_import_switches_nothing_in(ws, tmp_path):
    source = tmp_path / "prefs.jsonl"
    write(source, records(20))
    assert submit_import(ws, import_spec(source, "prefs")).wait(poll=0.1, timeout=60).state is JobState.DONE
    before = ws.dataset_manifest("prefs")
    write(source, records(3000, seed=1))
    job = submit_import(ws, import_spec(source, "prefs", replace=True))
    job.cancel()  # seen at the worker's first row check, before anything is written
    assert job.wait(poll=0.1, timeout=60).state is JobState.CANCELLED, job.log_tail()
    assert ws.dataset_manifest("prefs") == before and ws.load_pairs("prefs").num_rows == 20
    assert not [p for p in ws.dataset_dir("prefs").iterdir() if p.name.startswith(".import-")]
    assert job.status().resumable
    assert jobs.resume(ws, job).wait(poll=0.1, timeout=60).state is JobState.DONE, job.log_tail()
    assert ws.load_pairs("prefs").num_rows == 3000


def test_bad_import_requests_fail_before_any_job(ws, tmp_path):
    with pytest.raises(MarginLensError, match="choose a file"):
        import_spec(" ", "x")
    with pytest.raises(MarginLensError, match="policy"):
        import_spec(tmp_path, "x", policy="lenient")
    with pytest.raises(MarginLensError):
        import_spec(tmp_path, "bad/name")
    assert jobs.list_jobs(ws) == []


def test_push_runs_as_a_job_through_the_export_code(ws, tmp_path, monkeypatch):
    export = tmp_path / "picked.jsonl"
    write(export, records(5))
    # offline (as every test runs): refused at submit, before a job exists...
    with pytest.raises(MarginLensError, match="HF_HUB_OFFLINE is set"):
        submit_push(ws, export, "me/picked", token="hf_x")
    assert jobs.list_jobs(ws, "push") == []
    # ...and, had the network gone away after submitting, refused by the worker, whose failure is the job's
    job = jobs.submit(ws, "push", {"export": str(export), "repo_id": "me/picked", "private": True},
                      env={"HF_TOKEN": "hf_x"})
    status = job.wait(poll=0.1, timeout=60)
    assert status.state is JobState.FAILED and "HF_HUB_OFFLINE is set" in status.error, job.log_tail()
    assert "hf_x" not in json.dumps(job.spec) and "hf_x" not in (job.dir / "status.json").read_text()
