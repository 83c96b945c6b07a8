"""Data: import from a server path (under the dashboard's data root) with a bad row, read the validation report,
list and preview pairs. The attacks on the import (upload names, paths outside the roots) are in
test_app_attacks.py."""

from __future__ import annotations

import json
import re

import pytest
from helpers_app import app_test, metrics, no_errors, records, serve_config
from marginlens.core import jobs
from marginlens.core.data.ingest import import_dataset
from marginlens.core.job_status import JobState
from marginlens.core.workspace import Workspace

PATH = "_data_server_path"


@pytest.fixture(autouse=True)
def data_root(tmp_path, monkeypatch):
    """The sources these tests write lie in tmp_path: the dashboard was launched with it as its data root."""
    serve_config(monkeypatch, tmp_path / "serve", data_roots=[tmp_path])


def finish_import(at, ws, state: JobState = JobState.DONE) -> None:
    """The Import button submits a background "import" job; wait for it, then rerun as the panel's poll would."""
    (job,) = jobs.list_jobs(ws, "import")
    assert job.wait(poll=0.1, timeout=60).state is state, job.log_tail()
    at.run()


def test_import_report_list_and_preview(tmp_path):
    ws = Workspace(tmp_path / "workspace")
    rows = records(60)
    lines = [json.dumps(r) for r in rows]
    lines.insert(5, json.dumps({"prompt": "no answers here"}))  # missing chosen/rejected
    source = tmp_path / "prefs.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")

    at = app_test("data_page.py", ws)
    at.run()
    no_errors(at)
    assert any("No datasets yet" in i.value for i in at.info)
    at.text_input(key=PATH).input(str(source))  # "File or save_to_disk folder"
    name = next(t for t in at.text_input if t.label == "Name")
    name.input("mine")
    at.button[0].click().run()
    no_errors(at)
    finish_import(at, ws)
    no_errors(at)
    assert at.success, "no import summary"
    m = metrics(at)
    assert (m["Pairs"], m["Rows read"], m["Rejected"]) == ("60", "61", "1")
    frames = [d.value for d in at.dataframe]
    listing = frames[0]
    assert listing["name"].tolist() == ["mine"] and listing["pairs"].tolist() == [60]
    reasons = next(f for f in frames if list(f.columns) == ["reason", "rows"])
    assert reasons["rows"].sum() == 1
    rejected = next(f for f in frames if "field" in f.columns and "message" in f.columns)
    assert rejected["row"].tolist() == [5]
    preview = frames[-1]
    assert len(preview) == 50 and preview["prompt"].iloc[0].startswith("Question 0")

    # page 2 of the preview shows the remaining 10 pairs
    at.number_input[-1].set_value(2).run()
    assert len(at.dataframe[-1].value) == 10


def test_an_import_error_quoting_untrusted_text_is_shown_as_text(tmp_path):
    """The role below lands in the error message; unescaped, st.error would render it as an image."""
    ws = Workspace(tmp_path / "workspace")
    evil = "![x](http://127.0.0.1:9/track.png)"
    user = {"role": "user", "content": "Q?"}
    row = {"chosen": [user, {"role": evil, "content": "a"}], "rejected": [user, {"role": evil, "content": "b"}]}
    source = tmp_path / "evil.jsonl"
    source.write_text(json.dumps(row) + "\n", encoding="utf-8")
    at = app_test("data_page.py", ws)
    at.run()
    at.text_input(key=PATH).input(str(source))
    next(t for t in at.text_input if t.label == "Name").input("evil")
    next(s for s in at.selectbox if s.label == "Bad rows").set_value("strict")
    at.button[0].click().run()
    finish_import(at, ws, JobState.FAILED)
    assert len(at.error) == 1
    body = at.error[0].value
    assert evil not in body and r"\!\[x\]\(http" in body  # escaped markdown: no image, no link
    as_read = re.sub(r"\\(.)", r"\1", body)  # what the reader sees: the literal message
    assert "last_turn_not_assistant" in as_read and f"the last turn is '{evil}'" in as_read


def test_after_an_import_the_page_shows_the_new_dataset(tmp_path):
    """With a dataset already there, importing a second one moves the picker to it (not the old one)."""
    from marginlens.core.data.ingest import import_dataset

    ws = Workspace(tmp_path / "workspace")
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in records(30)), encoding="utf-8")
    second.write_text("".join(json.dumps(r) + "\n" for r in records(12)), encoding="utf-8")
    import_dataset(first, "aaa-first", ws)
    at = app_test("data_page.py", ws)
    at.run()
    assert metrics(at)["Pairs"] == "30"
    at.text_input(key=PATH).input(str(second))
    next(t for t in at.text_input if t.label == "Name").input("zzz-second")
    at.button[0].click().run()
    finish_import(at, ws)
    no_errors(at)
    assert next(s for s in at.selectbox if s.label == "Dataset").value == "zzz-second"
    assert metrics(at)["Pairs"] == "12"
    assert "zzz-second: imported 12 of 12 rows" in re.sub(r"\\(.)", r"\1", at.success[0].value)  # as read


def test_a_path_prefills_the_name_and_imports_without_typing_one(tmp_path):
    ws = Workspace(tmp_path / "workspace")
    source = tmp_path / "hh-rlhf harmless.test.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records(5)) + "\n", encoding="utf-8")
    at = app_test("data_page.py", ws)
    at.run()
    at.text_input(key=PATH).input(str(source)).run()
    assert next(t for t in at.text_input if t.label == "Name").value == "hh-rlhf-harmless"
    at.button[0].click().run()
    no_errors(at)
    finish_import(at, ws)
    assert ws.dataset_names() == ["hh-rlhf-harmless"]


def test_suggested_names_are_valid_or_empty():
    from marginlens.core.workspace import check_name, name_for_source

    assert name_for_source("/data/prefs.jsonl.gz") == "prefs"
    assert name_for_source("owner/ultrafeedback_binarized") == "ultrafeedback_binarized"
    assert name_for_source("/data/saved_folder/") == "saved_folder"
    assert name_for_source("") == "" and name_for_source("/data/.hidden") == ""
    assert check_name(name_for_source("C:\\data\\my file (1).csv")) == "my-file-1"


def test_a_name_the_user_typed_is_never_replaced_by_a_suggestion(tmp_path):
    ws = Workspace(tmp_path / "workspace")
    at = app_test("data_page.py", ws)
    at.run()
    next(t for t in at.text_input if t.label == "Name").input("mine").run()
    at.text_input(key=PATH).input(str(tmp_path / "other.jsonl")).run()
    assert next(t for t in at.text_input if t.label == "Name").value == "mine"


def test_the_url_names_the_dataset_so_a_reload_keeps_it(tmp_path):
    ws = Workspace(tmp_path / "workspace")
    for name in ("first", "second"):
        source = tmp_path / f"{name}.jsonl"
        source.write_text("\n".join(json.dumps(r) for r in records(3, seed=len(name))) + "\n", encoding="utf-8")
        import_dataset(source, name, ws)
    at = app_test("explore_page.py", ws)  # a new session opened on a link to ?dataset=second
    at.query_params["dataset"] = "second"
    at.run()
    no_errors(at)
    assert at.selectbox(key="_dataset_picker").value == "second"
    at.selectbox(key="_dataset_picker").set_value("first").run()
    assert at.query_params["dataset"] in ("first", ["first"])  # the URL follows the picker
    fresh = app_test("data_page.py", ws)
    fresh.query_params["dataset"] = "nonexistent"  # a stale link falls back to the first dataset
    fresh.run()
    no_errors(fresh)
    assert fresh.selectbox(key="_dataset_picker").value == "first"
