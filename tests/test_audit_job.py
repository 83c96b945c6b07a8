"""The audit as a background job against a real scripted judge server on 127.0.0.1: faults, exactly-once
storage, invalid answers, budget stop, cancel and resume after a kill, the CLI, and no key on disk."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers_data import make_dataset, random_logprobs, standard_records
from judge_server import Request, ScriptedJudge
from marginlens.core.audit.agreement_chart import agreement_figure
from marginlens.core.audit.audit_job import submit_audit
from marginlens.core.audit.audit_params import audit_params
from marginlens.core.audit.audit_report import (
    audit_report,
    disagreements,
    estimate_cost,
    flag_disagreements,
    verdict_rows,
    verdicts_for_pair,
)
from marginlens.core.chat_client import Endpoint, RetryPolicy
from marginlens.core.cli import main as cli_main
from marginlens.core.data.flags import load_flags
from marginlens.core.verdicts import VerdictStore
from marginlens.core.workspace import Workspace

KEY = "sk-audit-test-SECRET-4d1e2b"
FAST = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("audit") / "workspace")


def dataset(ws: Workspace, name: str, n: int, tmp: Path) -> tuple[list[str], dict[str, tuple[str, str]]]:
    make_dataset(ws, name, standard_records(n, seed=3), tmp)
    table = ws.load_pairs(name)
    return list(table["pair_id"]), {r["pair_id"]: (r["chosen"], r["rejected"]) for r in table}


def judge_preferring(texts: dict[str, tuple[str, str]], noisy: set[str], rationale: bool = True):
    """A judge that prefers the chosen response, except for `noisy` pairs where it prefers the rejected."""
    preferred = {(c if pid not in noisy else r) for pid, (c, r) in texts.items()}

    def answer(request: Request) -> str:
        a, _ = request.pair
        letter = "A" if a in preferred else "B"
        return json.dumps({"winner": letter, "rationale": f"{letter} is right"}) if rationale else letter

    return answer


def params_for(name: str, samples: dict[str, list[str]], judge: ScriptedJudge, model: str = "judge-1", **kw):
    endpoint = Endpoint(model, judge.base_url, timeout=kw.pop("timeout", 5.0), max_output_tokens=32)
    return audit_params(name, samples, endpoint, retry=FAST, **kw)


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_audit_job_end_to_end(ws, tmp_path):
    ids, texts = dataset(ws, "e2e", 10, tmp_path)
    noisy = {ids[5], ids[6]}
    samples = {"map": ids[0:4], "explicit": ids[4:8], "random": [ids[0], ids[1], ids[8], ids[9]]}
    off_format = texts[ids[9]][0]

    def fault_for(request: Request) -> str | None:  # the judge rambles on pair 9 shown as BA
        return "offformat" if request.pair[1] == off_format else None

    judge = ScriptedJudge(answer=judge_preferring(texts, noisy), faults=["429", "500", "drop", "malformed"],
                          fault_for=fault_for, retry_after=0.1)
    with judge:
        params = params_for("e2e", samples, judge, concurrency=3)
        assert "key" not in json.dumps(params.to_dict()).lower()
        estimate = estimate_cost(ws, params, usd_per_million_input=1.0, usd_per_million_output=2.0)
        assert (estimate.pairs, estimate.calls, estimate.calls_stored) == (10, 20, 0)
        assert estimate.input_tokens > 0 and estimate.output_tokens == 20 * 32 and estimate.usd > 0

        job = submit_audit(ws, params, api_key=KEY)
        status = job.wait(timeout=90)
        assert status.state == "done", job.log_tail()
        assert {r.authorization for r in judge.requests} == {f"Bearer {KEY}"}
        assert judge.faults_seen()[:4] == ["429", "500", "drop", "malformed"]
        # exactly once: every presentation (pair x order) was answered once and stored once
        answered = judge.answered()
        assert len(answered) == 20 and set(answered.values()) == {1}
        records = VerdictStore.for_dataset(ws, "e2e").records()
        assert len(records) == 20

        report = job.result()["report"]
        assert report == audit_report(ws, params)
        m, e, r = (report["subsets"][k] for k in ("map", "explicit", "random"))
        assert (m["agreement"], m["decisive"], m["kappa"], m["position_consistency"]) == (1.0, 4, 1.0, 1.0)
        assert (e["agree"], e["decisive"], e["agreement"]) == (2, 4, 0.5)
        assert (r["agree"], r["decisive"], r["invalid"], r["invalid_pairs"]) == (3, 3, 1, 1)
        invalid = [x for x in records if not x["valid"]]
        assert len(invalid) == 1 and invalid[0]["raw"] == "Both responses have their merits."
        assert e["ci_low"] < 0.5 < e["ci_high"]
        assert list(agreement_figure(report).data[0].x) == ["map", "explicit", "random"]  # the paper's order

        # Resubmitting the same settings finds the finished job; new settings reuse stored verdicts.
        before = len(judge.requests)
        assert submit_audit(ws, params, api_key=KEY).id == job.id
        again = submit_audit(ws, params_for("e2e", samples, judge, concurrency=1), api_key=KEY)
        assert again.id != job.id and again.wait(timeout=60).state == "done"
        assert len(judge.requests) == before
        assert estimate_cost(ws, params).calls == 0

    rows = {row["pair_id"]: row for row in verdict_rows(ws, params)}
    assert rows[ids[5]]["agrees"] is False and rows[ids[5]]["ab_rationale"] == "B is right"
    assert rows[ids[0]]["subsets"] == ["map", "random"]
    both = verdicts_for_pair(ws, "e2e", ids[5])
    assert [(r["order"], r["prefers"]) for r in both] == [("AB", "rejected"), ("BA", "rejected")]
    assert sorted(disagreements(ws, "e2e", "judge-1")) == sorted(noisy)
    assert sorted(flag_disagreements(ws, "e2e", "judge-1", action="swap")) == sorted(noisy)
    assert {pid: f["action"] for pid, f in load_flags(ws, "e2e").items()} == {pid: "swap" for pid in noisy}
    assert {row["pair_id"] for row in verdict_rows(ws, params) if row["flag_action"]} == noisy

    # A provider that echoes the key in its error: the job fails with the key scrubbed.
    with ScriptedJudge(fault_for=lambda request: "401") as denying:
        denied = params_for("e2e", samples, denying, model="judge-denied", concurrency=2)
        failed = submit_audit(ws, denied, api_key=KEY)
        status = failed.wait(timeout=60)
        assert status.state == "failed" and "401" in status.message and "***" in status.message
        assert 1 <= len(denying.requests) <= 2  # the first refusal stops the job; only calls in flight finish
    assert files_containing(ws.root, KEY) == []


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_cancel_then_kill_then_resume_pays_at_most_the_calls_in_flight(ws, tmp_path):
    ids, texts = dataset(ws, "resume", 6, tmp_path)
    judge = ScriptedJudge(answer=judge_preferring(texts, set(), rationale=False), delay=0.25)
    store = VerdictStore.for_dataset(ws, "resume")
    with judge:
        params = params_for("resume", {"random": ids}, judge, concurrency=1)
        job = submit_audit(ws, params, api_key=KEY)
        _wait_for(lambda: len(store.records()) >= 2)
        job.cancel()
        assert job.wait(timeout=30).state == "cancelled"
        after_cancel = len(store.records())
        assert 2 <= after_cancel < 12

        assert submit_audit(ws, params, api_key=KEY).id == job.id  # resumes the same job
        _wait_for(lambda: len(store.records()) >= after_cancel + 2)
        os.kill(job.status().pid, signal.SIGKILL)
        _wait_for(lambda: job.status().state == "interrupted", timeout=10)
        killed_at = len(store.records())
        assert killed_at < 12

        submit_audit(ws, params, api_key=KEY)
        assert job.wait(timeout=60).state == "done", job.log_tail()
        assert job.status().resumed is True
    answered = judge.answered()
    assert len(answered) == 12 and len(store.records()) == 12
    # At most one call was in flight at the kill (concurrency 1), so at most one answer was paid twice.
    assert sum(answered.values()) <= 13
    assert job.result()["report"]["overall"]["agreement"] == 1.0
    # The ledger carried the requests of the killed runs into the resumed one's budget. It counts a
    # call before sending it (so a budget is never overrun), hence a kill between the two may leave
    # one counted call that never reached the server.
    assert len(judge.requests) <= job.result()["requests"] <= len(judge.requests) + 1


def test_budget_stops_before_the_limit_and_a_larger_budget_pays_only_the_rest(ws, tmp_path):
    ids, texts = dataset(ws, "budget", 4, tmp_path)
    with ScriptedJudge(answer=judge_preferring(texts, set())) as judge:
        small = params_for("budget", {"random": ids}, judge, concurrency=2, max_calls=5)
        assert not estimate_cost(ws, small).fits_budget
        job = submit_audit(ws, small, api_key=KEY)
        assert job.wait(timeout=60).state == "done", job.log_tail()
        result = job.result()
        assert len(judge.requests) == 5 and result["requests"] == 5
        assert "call budget of 5" in result["budget_stop"] and not result["complete"]
        assert len(VerdictStore.for_dataset(ws, "budget").records()) == 5
        assert result["report"]["overall"]["pending"] >= 1

        bigger = submit_audit(ws, params_for("budget", {"random": ids}, judge, concurrency=2), api_key=KEY)
        assert bigger.wait(timeout=60).state == "done"
        assert len(judge.requests) == 8 and bigger.result()["complete"]


def test_cli_audit_flag_unflag(ws, tmp_path, monkeypatch, capsys):
    ids, texts = dataset(ws, "cli", 10, tmp_path)
    random_logprobs(ws, "cli")  # gives the implicit margin, so all four subsets can be built
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    base = ["--workspace", str(ws.root)]
    with ScriptedJudge(answer=judge_preferring(texts, {ids[0], ids[1], ids[2]})) as judge:
        args = [*base, "audit", "cli", "--judge-model", "judge-cli", "--base-url", judge.base_url, "--n", "2",
                "--max-calls", "100", "--concurrency", "2", "--timeout", "5"]
        assert cli_main([*args, "--estimate"]) == 0
        assert "estimate:" in capsys.readouterr().out and judge.requests == []
        assert cli_main(args) == 0
        out = capsys.readouterr().out
        for name in ("map", "explicit", "implicit", "random", "overall"):
            assert any(line.startswith(name) for line in out.splitlines()), out
        assert judge.requests and {r.authorization for r in judge.requests} == {f"Bearer {KEY}"}
        job_id = next(line.split()[1] for line in out.splitlines() if line.startswith("job "))
        assert cli_main([*base, "audit-report", job_id, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert set(report["subsets"]) == {"map", "explicit", "implicit", "random"}
        assert all(s["n"] == 2 for s in report["subsets"].values())

    assert cli_main([*base, "flag", "cli", "--disagreements", "--judge-model", "judge-cli"]) == 0
    flagged = load_flags(ws, "cli")
    assert set(flagged) == set(disagreements(ws, "cli", "judge-cli"))
    assert cli_main([*base, "flag", "cli", ids[9], "--swap", "--reason", "looks wrong"]) == 0
    assert load_flags(ws, "cli")[ids[9]] == {**load_flags(ws, "cli")[ids[9]], "action": "swap", "reason": "looks wrong"}
    assert cli_main([*base, "flag", "cli", "nope"]) == 2
    assert "no pair 'nope'" in capsys.readouterr().err
    assert cli_main([*base, "unflag", "cli", "--all"]) == 0 and load_flags(ws, "cli") == {}
    assert files_containing(ws.root, KEY) == []
