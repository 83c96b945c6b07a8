"""Issue 12, point 2: an audit against an endpoint that cannot answer. It is refused before it starts
(unreachable, key refused) with the server's own words, and a model the server does not list is a warning;
a run whose calls cannot reach a working server stops with a clear message; while it runs, the status counts requests, retries and the last error."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers_data import make_dataset, standard_records
from judge_server import ScriptedJudge
from marginlens.core.audit.audit_job import ALL_FAILED_STOP, submit_audit, verdict_record
from marginlens.core.audit.audit_params import audit_params
from marginlens.core.audit.endpoint_check import check_endpoint
from marginlens.core.chat_client import Completion, Endpoint, RetryPolicy
from marginlens.core.cli import main
from marginlens.core.errors import MarginLensError
from marginlens.core.job_status import details
from marginlens.core.jobs import list_jobs
from marginlens.core.verdicts import VerdictStore

UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there


class _ModelList:
    """A real HTTP server whose GET /v1/models answers `status` with `body`."""

    def __init__(self, status: int, body: dict):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = json.dumps(body).encode()
                outer.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.paths: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_unreachable_endpoint_is_refused_before_any_job(ws, tmp_path):
    make_dataset(ws, "d", standard_records(4, seed=1), tmp_path)
    ids = list(ws.load_pairs("d")["pair_id"])
    params = audit_params("d", {"random": ids}, Endpoint("gpt-x", UNREACHABLE, timeout=5.0))
    with pytest.raises(MarginLensError, match=r"cannot reach the judge endpoint http://127.0.0.1:9/v1"):
        submit_audit(ws, params)
    assert list_jobs(ws, "audit") == []  # nothing started, nothing to cancel


def test_refused_key_quotes_the_server_and_hides_the_key():
    key = "sk-endpoint-check-SECRET-77"
    server = _ModelList(401, {"error": {"message": f"Incorrect API key provided: {key}", "code": "invalid_api_key"}})
    try:
        with pytest.raises(MarginLensError) as caught:
            check_endpoint(Endpoint("gpt-x", server.base_url), key)
    finally:
        server.close()
    text = str(caught.value)
    assert "refused the API key (HTTP 401): Incorrect API key provided: ***" in text and key not in text
    assert server.paths == ["/v1/models"]


def test_a_model_the_server_does_not_list_is_a_warning_not_a_refusal():
    server = _ModelList(200, {"object": "list", "data": [{"id": "llama-3-8b", "object": "model"}]})
    try:
        warning = check_endpoint(Endpoint("gpt-4o", server.base_url), None)
        assert check_endpoint(Endpoint("llama-3-8b", server.base_url), None) is None  # a listed model
    finally:
        server.close()
    assert warning is not None and "does not list model 'gpt-4o' (it lists: llama-3-8b); going ahead" in warning


def test_cli_audits_an_alias_the_server_does_not_list_and_warns_on_stderr(ws, tmp_path, capsys):
    """Ollama answers to `llama3` but lists `llama3:latest`: the audit runs, and says so once on stderr."""
    make_dataset(ws, "alias", standard_records(4, seed=5), tmp_path)
    with ScriptedJudge(models=["llama3:latest"]) as judge:
        code = main(["audit", "alias", "--workspace", str(ws.root), "--judge-model", "llama3", "--base-url",
                     judge.base_url, "--subsets", "random", "--ratio", "1", "--n", "2", "--concurrency", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning: judge endpoint" in captured.err and "does not list model 'llama3'" in captured.err
    assert len(judge.requests) == 4 and {r.model for r in judge.requests} == {"llama3"}
    assert json.loads(captured.out[captured.out.index("{"):])["overall"]["judged"] == 2


def test_every_call_failing_stops_the_job_with_live_counts(ws, tmp_path):
    make_dataset(ws, "down", standard_records(6, seed=2), tmp_path)
    ids = list(ws.load_pairs("down")["pair_id"])
    retry = RetryPolicy(max_attempts=3, base_delay=0.2, max_delay=0.2)
    with ScriptedJudge(fault_for=lambda request: "500") as judge:
        params = audit_params("down", {"random": ids}, Endpoint("judge-1", judge.base_url, timeout=5.0),
                              retry=retry, concurrency=1)
        job = submit_audit(ws, params)
        seen = []
        deadline = time.monotonic() + 60
        while job.status().live and time.monotonic() < deadline:
            seen.append(job.status())
            time.sleep(0.05)
        status = job.wait(timeout=30)
    assert status.state == "failed", job.log_tail()
    assert f"{ALL_FAILED_STOP} judge calls could not reach a working server and none was answered" in status.message
    assert "last error: gave up after 3 attempts: HTTP 500" in status.message
    # stopped after ALL_FAILED_STOP calls of 3 attempts each, not after all 12 judgments
    assert len(judge.requests) == ALL_FAILED_STOP * 3
    # while running: the total from the start, and requests / retries / the last error before any verdict
    running = [s for s in seen if s.message == "judging" and s.done == 0]
    assert running and all(s.total == 12 for s in running)
    assert any(s.extra.get("calls", 0) > 0 and s.extra.get("retries", 0) > 0 for s in running)
    assert any("last error: HTTP 500" in details("audit", s) for s in running)
    assert status.extra["failed"] == ALL_FAILED_STOP and status.extra["retries"] == ALL_FAILED_STOP * 2


def _finish(job):
    status = job.wait(timeout=60)
    assert status.state == "failed", job.log_tail()
    return status


def test_requests_the_server_turns_down_do_not_stop_the_audit(ws, tmp_path):
    """Three 400s (prompts over the context) before any answer say nothing about the endpoint: the audit
    goes on, stores the rest, and names the calls that failed."""
    make_dataset(ws, "long", standard_records(6, seed=3), tmp_path)
    ids = list(ws.load_pairs("long")["pair_id"])
    with ScriptedJudge(faults=["400"] * ALL_FAILED_STOP) as judge:
        params = audit_params("long", {"random": ids}, Endpoint("judge-1", judge.base_url, timeout=5.0),
                              retry=RetryPolicy(max_attempts=2, base_delay=0.1, max_delay=0.1), concurrency=1)
        status = _finish(submit_audit(ws, params))
    assert len(judge.requests) == 12  # every judgment asked; a 400 is not retried
    assert "none was answered" not in status.message
    assert f"{ALL_FAILED_STOP} judge calls failed after retries" in status.message and "HTTP 400" in status.message
    assert len(params.pending(VerdictStore.for_dataset(ws, "long"))) == ALL_FAILED_STOP


def test_an_answer_another_audit_stored_first_counts_as_answered(ws, tmp_path):
    """The judge answers, but another writer stored the same verdicts first (append returns False): the
    endpoint works, so the 5xx failures that follow do not stop the audit as "none answered"."""
    make_dataset(ws, "raced", standard_records(6, seed=4), tmp_path)
    ids = list(ws.load_pairs("raced")["pair_id"])
    other = VerdictStore.for_dataset(ws, "raced")
    raced: list[bool] = []

    def answer(request):
        if not raced:  # the other audit stores every verdict while this first answer is on its way
            for pid, order in params.pending(other):
                other.append(verdict_record(pid, order, Completion("A", "A", 1, 1, 1), params.endpoint,
                                            params.prompt_version, "audit-other"))
            raced.append(True)
        return "A"

    judge = ScriptedJudge(answer=answer, fault_for=lambda r: "500" if 1 <= len(judge.requests) <= ALL_FAILED_STOP
                          else None)
    with judge:
        params = audit_params("raced", {"random": ids}, Endpoint("judge-1", judge.base_url, timeout=5.0),
                              retry=RetryPolicy(max_attempts=1), concurrency=1)
        status = _finish(submit_audit(ws, params))
    assert "none was answered" not in status.message
    assert f"{ALL_FAILED_STOP} judge calls failed after retries" in status.message
    assert len(judge.requests) == 12 and status.extra["failed"] == ALL_FAILED_STOP
