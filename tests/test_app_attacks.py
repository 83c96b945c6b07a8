"""The attacks found against the running dashboard, replayed through the pages (AppTest) with real files, real
job workers and real HTTP servers on 127.0.0.1:

- an upload whose browser name is a path (absolute, or climbing with ../) lands under uploads/ with a name
  MarginLens makes, and nothing appears at the path the browser named;
- a server path outside the data roots is refused before anything reads it, and its content never shows;
- a judge URL typed with an empty key field gets no key (neither the server's OPENAI_API_KEY nor a configured
  endpoint's), in the endpoint pre-check and in the worker, whose environment holds none either;
- an evaluator text naming api_key_env (or base_url) is refused before any request is made;
- a viewer sees audits but no form, no Cancel/Resume, and who started each job.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers_app import DATASET, app_test, build_workspace, no_errors, records, serve_config, worker_environ
from judge_server import ScriptedJudge
from marginlens.app.access import OWN_URL
from marginlens.app.uploads import DIGEST_CHARS
from marginlens.app.widgets import md_escape
from marginlens.core import actor, jobs
from marginlens.core.atomic import write_json
from marginlens.core.audit.audit_job import list_audits
from marginlens.core.audit.audit_params import audit_params
from marginlens.core.chat_client import KEY_ENV, Endpoint
from marginlens.core.job_status import JobState
from marginlens.core.workspace import Workspace
from tiny_models import tiny_llama  # noqa: F401  (session fixture)

SERVER_KEY = "sk-server-env-SECRET-5d1c"  # what the server process's own environment holds
CONFIGURED_KEY = "sk-configured-endpoint-SECRET-9a2e"  # the key of an endpoint configured at launch
NO_KEY = "Bearer no-key"
READ_ONLY_BUTTONS = {"Check now"}  # the Data page's workspace check only reads  # what the OpenAI client sends when it is given no key


@dataclass
class RecordingJudge(ScriptedJudge):
    """The scripted judge that also records the Authorization header of every request, the endpoint
    pre-check's GET /models included; `refuse_models`: answer that GET with 401 (nothing gets further)."""

    refuse_models: bool = False
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        judge, base = self, self._handler

        class Recording(base):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:
                judge.seen.append(self.headers.get("Authorization", ""))
                if judge.refuse_models:
                    self._send(401, json.dumps({"error": {"message": "no such key"}}).encode())
                else:
                    super().do_GET()

            def do_POST(self) -> None:
                judge.seen.append(self.headers.get("Authorization", ""))
                super().do_POST()

        self._handler = Recording


def rendered(at) -> str:
    """Every text the page sent to the browser, as one string."""
    parts = []
    for kind in ("markdown", "caption", "error", "info", "success", "warning", "code", "text", "title", "subheader"):
        parts.extend(str(el.value) for el in getattr(at, kind))
    parts.extend(str(el.value) for el in at.text_input)
    return "\n".join(parts)


# -- Data page: uploads and server paths -----------------------------------------------------------------------
def test_an_upload_named_like_a_path_lands_under_uploads_with_a_generated_name(tmp_path, monkeypatch):
    serve_config(monkeypatch, tmp_path / "serve")  # no data root
    ws = Workspace(tmp_path / "workspace")
    content = "".join(json.dumps(r) + "\n" for r in records(6)).encode()
    absolute = tmp_path / "x" / "evil.jsonl"
    climbing = "../../evil.jsonl"  # from uploads/: the workspace's parent
    source = None
    for browser_name, name in ((str(absolute), "abs"), (climbing, "rel")):
        at = app_test("data_page.py", ws)
        at.run()
        at.file_uploader[0].set_value((browser_name, content, "application/json")).run()
        no_errors(at)
        assert at.text_input(key="_data_name").value == "evil"  # the label, sanitised, suggests the name
        assert str(absolute) not in rendered(at)
        at.text_input(key="_data_name").input(name)
        next(b for b in at.button if b.label == "Import").click().run()
        no_errors(at)
        job = next(j for j in jobs.list_jobs(ws, "import") if j.spec["params"]["name"] == name)
        assert job.wait(poll=0.1, timeout=60).state is JobState.DONE, job.log_tail()
        source = Path(job.spec["params"]["source"])
        assert source.parent == ws.root / "uploads"
        assert re.fullmatch(rf"[0-9a-f]{{{DIGEST_CHARS}}}\.jsonl", source.name)
        assert source.read_bytes() == content
    assert not absolute.exists() and not absolute.parent.exists()
    assert not (ws.root / "uploads" / climbing).resolve().exists()  # the workspace's parent
    assert not (Path.cwd() / climbing).resolve().exists()
    assert [p.name for p in (ws.root / "uploads").iterdir()] == [source.name]  # same content, same file
    assert sorted(ws.dataset_names()) == ["abs", "rel"]


def test_an_upload_of_another_type_is_refused(tmp_path, monkeypatch):
    serve_config(monkeypatch, tmp_path / "serve")
    ws = Workspace(tmp_path / "workspace")
    at = app_test("data_page.py", ws)
    at.run()
    at.file_uploader[0].set_value(("evil.gz", b"\x1f\x8b not a dataset", "application/gzip")).run()
    at.text_input(key="_data_name").input("gz")
    next(b for b in at.button if b.label == "Import").click().run()
    assert any("the importer reads" in e.value for e in at.error), [e.value for e in at.error]
    assert not jobs.list_jobs(ws) and not (ws.root / "uploads").exists()


def test_server_paths_outside_the_data_roots_are_refused_unread(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"q": "TOP-SECRET-ROW", "a": "x", "b": "y"}) + "\n", encoding="utf-8")
    (root / "link.jsonl").symlink_to(secret)  # a link inside the root to a file outside it
    serve_config(monkeypatch, tmp_path / "serve", data_roots=[root])
    ws = Workspace(tmp_path / "workspace")
    hostname = Path("/etc/hostname")
    leaked = hostname.read_text().strip() if hostname.is_file() else ""
    leaked = leaked if len(leaked) >= 8 else ""  # a short name could appear in any text by chance
    for path in ("/etc/hostname", str(secret), f"{root}/../secret.jsonl", str(root / "link.jsonl"), "secret.jsonl"):
        at = app_test("data_page.py", ws)
        at.run()
        at.text_input(key="_data_server_path").input(path)
        at.text_input(key="_data_name").input("stolen")
        next(t for t in at.text_input if t.label == "Column mapping (unknown layouts)").input("prompt=q,chosen=a,"
                                                                                               "rejected=b")
        next(b for b in at.button if b.label == "Import").click().run()
        assert not at.exception
        (error,) = [e.value for e in at.error]
        assert "data roots" in error or "absolute path" in error, error
        page = rendered(at)
        assert "TOP-SECRET-ROW" not in page and (not leaked or leaked not in page)
    assert not jobs.list_jobs(ws) and not ws.dataset_names()
    # a Hub id that names a file is no Hub id
    at = app_test("data_page.py", ws)
    at.run()
    at.text_input(key="_data_hub_id").input(str(secret))
    at.text_input(key="_data_name").input("stolen")
    next(b for b in at.button if b.label == "Import").click().run()
    assert any("expected owner/name" in e.value for e in at.error)
    assert not jobs.list_jobs(ws)


def test_without_data_roots_the_path_tab_offers_no_field(tmp_path, monkeypatch):
    serve_config(monkeypatch, tmp_path / "serve")
    at = app_test("data_page.py", Workspace(tmp_path / "workspace"))
    at.run()
    no_errors(at)
    assert all(t.key != "_data_server_path" for t in at.text_input)
    assert any("reads no folder of the server" in i.value for i in at.info)


# -- Audit page: the key goes with the endpoint it belongs to, and only there ----------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the worker's environment from /proc")
def test_a_typed_url_with_an_empty_key_field_sends_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SERVER_KEY)  # as if `marginlens app` had left it in the server's environment
    ws = build_workspace(tmp_path / "workspace", n=12)
    with RecordingJudge(delay=0.3) as attacker, RecordingJudge() as lab:
        serve_config(monkeypatch, tmp_path / "serve", endpoints=[("lab", lab.base_url, CONFIGURED_KEY)])
        at = app_test("audit_page.py", ws)
        at.run()
        no_errors(at)
        assert at.selectbox(key="_audit_endpoint_choice").options == ["lab", OWN_URL]
        at.selectbox(key="_audit_endpoint_choice").set_value(OWN_URL).run()
        at.text_input(key="_audit_endpoint_url").input(attacker.base_url)  # the key field stays empty
        at.text_input(key="_audit_model").input("judge-typed")
        at.number_input(key="_audit_n").set_value(1)
        at.number_input(key="_audit_concurrency").set_value(1)
        next(b for b in at.button if b.label == "Estimate cost").click().run()
        no_errors(at)
        at.button(key="_audit_start").click().run()
        no_errors(at)
        (job,) = list_audits(ws, DATASET)
        assert worker_environ(job).get(KEY_ENV) == ""  # set, and empty: the inherited key is overwritten
        assert job.wait(poll=0.1, timeout=60).state is JobState.DONE, job.log_tail()
        assert attacker.seen and attacker.requests and set(attacker.seen) == {NO_KEY}  # the pre-check included
        assert not lab.seen

        # the configured endpoint, picked by name: its key, to its own URL only
        at.selectbox(key="_audit_endpoint_choice").set_value("lab").run()
        at.text_input(key="_audit_model").input("judge-configured")
        next(b for b in at.button if b.label == "Estimate cost").click().run()
        at.button(key="_audit_start").click().run()
        no_errors(at)
        second = next(j for j in list_audits(ws, DATASET) if j.id != job.id)
        assert second.wait(poll=0.1, timeout=60).state is JobState.DONE, second.log_tail()
        assert lab.requests and set(lab.seen) == {f"Bearer {CONFIGURED_KEY}"}
        assert set(attacker.seen) == {NO_KEY}
    for leaked in (SERVER_KEY, CONFIGURED_KEY):
        assert not [p for p in ws.root.rglob("*") if p.is_file() and leaked.encode() in p.read_bytes()]


def test_a_key_goes_to_its_own_url_only(tmp_path, monkeypatch):
    """How a stored job's or plan's URL finds its key on Resume (app.llm_endpoints.for_url)."""
    from marginlens.app import llm_endpoints
    from marginlens.app.access import EndpointChoice

    lab, other = "http://127.0.0.1:7001/v1", "http://127.0.0.1:7002/v1"
    serve_config(monkeypatch, tmp_path / "serve", endpoints=[("lab", lab, CONFIGURED_KEY)])
    assert llm_endpoints.for_url(other, [EndpointChoice(lab, "sk-typed")]).key is None
    assert llm_endpoints.for_url(lab, []).key == CONFIGURED_KEY  # the configured endpoint, at its own URL
    assert llm_endpoints.for_url(lab + "/", [EndpointChoice(lab, "sk-typed")]).key == "sk-typed"  # picked first
    assert llm_endpoints.for_url(None, [EndpointChoice(other, "sk-typed")]).key is None  # api.openai.com
    assert llm_endpoints.key_env(llm_endpoints.for_url(other, [])) == {KEY_ENV: ""}


def test_llm_rating_at_a_typed_url_without_a_key_gets_none(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SERVER_KEY)
    serve_config(monkeypatch, tmp_path / "serve")
    ws = build_workspace(tmp_path / "workspace", n=3)
    with RecordingJudge(answer=lambda request: "Rating: 7") as attacker:
        at = app_test("score_page.py", ws)
        at.run()
        at.text_input(key="_score_rating_url").input(attacker.base_url)  # the key field stays empty
        at.text_input(key="_score_policy").input("")
        at.radio[0].set_value("llm_rating")
        at.text_input(key="_score_explicit_value").input("rater")
        next(b for b in at.button if b.label == "Start scoring").click().run()
        no_errors(at)
        (job,) = jobs.list_jobs(ws, "score")
        assert job.wait(poll=0.1, timeout=120).state is JobState.DONE, job.log_tail()
        assert attacker.requests and set(attacker.seen) == {NO_KEY}
    assert not [p for p in ws.root.rglob("*") if p.is_file() and SERVER_KEY.encode() in p.read_bytes()]


# -- Experiments and self-play: no key variable, no URL, from the client ---------------------------------------
def test_an_evaluator_naming_a_key_variable_is_refused_before_any_request(tmp_path, monkeypatch):
    from helpers_experiment import build_dataset

    monkeypatch.setenv("SOME_SERVER_SECRET", SERVER_KEY)
    ws = build_dataset(tmp_path / "workspace")
    with RecordingJudge() as attacker:
        at = app_test("experiments_page.py", ws)
        at.run()
        for text in (f"judge:m,base_url={attacker.base_url},api_key_env=SOME_SERVER_SECRET",
                     "rating:m,api_key_env=SOME_SERVER_SECRET", f"judge:m,base_url={attacker.base_url}"):
            at.text_input(key="_exp_eval").input(text).run()
            assert any("is not accepted on the dashboard" in e.value for e in at.error), [e.value for e in at.error]
            assert all(b.key != "_exp_start" for b in at.button)
        sp = app_test("selfplay_page.py", ws)
        sp.run()
        sp.text_input(key="_sp_annotate").input(f"rating:m,base_url={attacker.base_url},"
                                                "api_key_env=SOME_SERVER_SECRET").run()
        assert any("is not accepted on the dashboard" in e.value for e in sp.error), [e.value for e in sp.error]
        assert all(b.key != "_sp_start" for b in sp.button)
    assert attacker.seen == [] and not jobs.list_jobs(ws)


def test_the_evaluator_pre_check_sends_only_the_picked_key(tmp_path, monkeypatch, tiny_llama):  # noqa: F811
    from helpers_experiment import build_dataset, register_test_verifier, unregister_test_verifier

    monkeypatch.setenv(KEY_ENV, SERVER_KEY)
    register_test_verifier(tmp_path / "plugin")
    try:
        ws = build_dataset(tmp_path / "workspace", policy=str(tiny_llama))
        serve_config(monkeypatch, tmp_path / "serve", data_roots=[tiny_llama])
        with RecordingJudge(refuse_models=True) as attacker:
            at = app_test("experiments_page.py", ws)
            at.run()
            at.text_input(key="_exp_policy").input(str(tiny_llama))
            at.text_input(key="_exp_eval").input("judge:test-judge").run()
            at.text_input(key="_exp_endpoint_url").input(attacker.base_url).run()
            no_errors(at)
            at.button(key="_exp_start").click().run()
            assert any("refused the API key" in e.value for e in at.error), [e.value for e in at.error]
            assert attacker.seen == [NO_KEY]
            at.text_input(key="_exp_endpoint_key").input("sk-typed-by-the-operator").run()
            at.button(key="_exp_start").click().run()
            assert attacker.seen == [NO_KEY, "Bearer sk-typed-by-the-operator"]
        assert not jobs.list_jobs(ws)
    finally:
        unregister_test_verifier(tmp_path / "plugin")


# -- Viewers ---------------------------------------------------------------------------------------------------
def test_a_viewer_reads_audits_but_starts_resumes_and_flags_nothing(tmp_path, monkeypatch):
    ws = build_workspace(tmp_path / "workspace", n=12)
    ids = list(ws.load_pairs(DATASET)["pair_id"])[:2]
    params = audit_params(DATASET, {"random": ids}, Endpoint("judge-viewer", "http://127.0.0.1:9/v1"))
    job = jobs.Job(ws.jobs_dir / jobs.job_id_for("audit", params.to_dict()))
    write_json(job.dir / "spec.json", {"kind": "audit", "params": params.to_dict(), "job_id": job.id,
                                       "created": "2026-01-01T00:00:00Z", "started_by": "alice@example.com"})
    write_json(job.dir / "status.json", {"state": "cancelled", "message": "cancelled"})
    operator = app_test("audit_page.py", ws)
    operator.run()
    no_errors(operator)
    assert [b.label for b in operator.button if b.label in ("Resume", "Estimate cost")] == ["Estimate cost", "Resume"]

    started = f"started by {md_escape('alice@example.com')}"  # as markdown: escaped, shown as typed
    assert any(started in m.value for m in operator.markdown)

    # the test thread is no script run: the process default is who acts in the page's thread
    monkeypatch.setattr(actor, "_DEFAULT", actor.Actor("viewer", may_write=False))
    for page in ("audit_page.py", "data_page.py", "export_page.py"):
        at = app_test(page, ws)
        at.run()
        no_errors(at)
        assert {b.label for b in at.button} <= READ_ONLY_BUTTONS, page
        assert not at.file_uploader and not [t for t in at.text_input if "endpoint" in (t.key or "")]
        assert any("needs the operator's sign-in" in i.value for i in at.info), page
        if page == "audit_page.py":
            assert any(started in m.value for m in at.markdown)
            assert any("No verdict yet" in i.value for i in at.info)  # the audit itself is there to read
