"""Issue 12, Audit: answers that were off-format can be asked again, explicitly, charged and recorded (the
answer replaced stays in the verdict file); and the page shows no empty chart or table of None before the
first verdict."""

from __future__ import annotations

import json

from helpers_app import DATASET, app_test, build_workspace, no_errors
from judge_server import ScriptedJudge
from marginlens.core.audit.audit_job import list_audits, submit_audit
from marginlens.core.audit.audit_params import audit_params, reask_params
from marginlens.core.audit.audit_report import audit_report
from marginlens.core.chat_client import Endpoint, RetryPolicy
from marginlens.core.verdicts import VerdictStore, verdicts_path

FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)


def test_reask_off_format_answers_from_the_page(tmp_path):
    ws = build_workspace(tmp_path / "workspace", n=8)
    ids = list(ws.load_pairs(DATASET)["pair_id"])[:4]
    chosen = {row["chosen"] for row in ws.load_pairs(DATASET) if row["pair_id"] in ids}
    rambling = {"on": True}

    def fault_for(request):  # rambles on the first pair shown chosen-first, until told to stop
        return "offformat" if rambling["on"] and request.pair[0] == sorted(chosen)[0] else None

    with ScriptedJudge(answer=lambda r: "A" if r.pair[0] in chosen else "B", fault_for=fault_for) as judge:
        endpoint = Endpoint("judge-r", judge.base_url, timeout=5.0, max_output_tokens=16)
        params = audit_params(DATASET, {"random": ids}, endpoint, retry=FAST, concurrency=1)
        first = submit_audit(ws, params)
        assert first.wait(timeout=60).state == "done", first.log_tail()
        assert audit_report(ws, params)["overall"]["invalid"] == 1
        store = VerdictStore.for_dataset(ws, DATASET)
        again = reask_params(store, params)
        assert again is not None and again.reask == 1 and len(again.pending(store)) == 1
        assert params.pending(store) == []  # a plain resubmission never re-asks

        rambling["on"] = False
        at = app_test("audit_page.py", ws)
        at.run()
        no_errors(at)
        (button,) = [b for b in at.button if b.label == "Re-ask the judge for 1 off-format answers"]
        assert "charged" in button.help and "round 1" in button.help
        sent = len(judge.requests)
        button.click().run()
        no_errors(at)
        reasked = next(j for j in list_audits(ws, DATASET) if j.id != first.id)
        assert reasked.wait(timeout=60).state == "done", reasked.log_tail()
        assert at.session_state["_audit_job"] == reasked.id
    assert len(judge.requests) == sent + 1  # one call, for the one off-format answer
    assert reasked.result()["requests"] == 1  # charged to the re-ask's own budget
    assert audit_report(ws, params)["overall"]["invalid"] == 0  # the new answer counts
    lines = [json.loads(line) for line in verdicts_path(ws, DATASET).read_text().splitlines()]
    assert len(lines) == 9  # 8 first answers, the off-format one kept, plus the re-ask
    (record,) = [line for line in lines if line.get("reask")]
    assert record["reask"] == 1 and record["valid"]
    assert record["replaces"]["raw"] == "Both responses have their merits."  # what it replaced, recorded
    assert reask_params(VerdictStore.for_dataset(ws, DATASET), params) is None
    at.run()
    assert not [b for b in at.button if b.label.startswith("Re-ask")]


def test_no_chart_and_no_table_before_the_first_verdict(tmp_path):
    ws = build_workspace(tmp_path / "workspace", n=8)
    ids = list(ws.load_pairs(DATASET)["pair_id"])[:3]
    with ScriptedJudge() as judge:
        params = audit_params(DATASET, {"random": ids}, Endpoint("judge-0", judge.base_url), max_calls=0)
        job = submit_audit(ws, params)  # a budget of no calls: the job ends without a verdict
        assert job.wait(timeout=60).state == "done", job.log_tail()
    at = app_test("audit_page.py", ws)
    at.run()
    no_errors(at)
    assert any("No verdict yet" in i.value for i in at.info)
    assert not at.get("plotly_chart") and not at.dataframe


def test_cli_reask_invalid(tmp_path, capsys):
    from marginlens.core.cli import main

    ws = build_workspace(tmp_path / "workspace", n=5)
    first_chosen = ws.load_pairs(DATASET)[0]["chosen"]
    rambling = {"on": True}
    with ScriptedJudge(fault_for=lambda r: "offformat" if rambling["on"] and r.pair[0] == first_chosen else None) as judge:
        base = ["audit", DATASET, "--workspace", str(ws.root), "--judge-model", "judge-c", "--base-url", judge.base_url,
                "--subsets", "random", "--n", "6", "--concurrency", "1", "--json"]
        assert main(base) == 0
        out = capsys.readouterr().out
        assert json.loads(out[out.index("{"):])["overall"]["invalid"] == 1
        rambling["on"] = False
        sent = len(judge.requests)
        assert main([*base, "--reask-invalid"]) == 0
        out = capsys.readouterr().out
        report = json.loads(out[out.index("{"):])
        assert len(judge.requests) == sent + 1 and report["overall"]["invalid"] == 0
        assert main([*base, "--reask-invalid"]) == 0
        assert "nothing to ask again" in capsys.readouterr().out
        assert len(judge.requests) == sent + 1
