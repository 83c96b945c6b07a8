"""Issue 23, the Audit page in its less happy states (real audit workers asking the scripted judge server on
127.0.0.1): a finished audit with no decisive pair says why instead of drawing empty bars, its statistics
show a dash, not "None"; the audit selector's label follows the job to "done"; and a dataset without an
explicit margin is pointed to the Score page in the dashboard's words, not a CLI command."""

from __future__ import annotations

import json
import threading

import pytest
from helpers_app import DATASET, app_test, build_workspace, no_errors, records, write_policy
from judge_server import ScriptedJudge
from marginlens.core.audit.audit_job import submit_audit
from marginlens.core.audit.audit_params import audit_params
from marginlens.core.chat_client import Endpoint
from marginlens.core.data.ingest import import_dataset
from marginlens.core.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    return build_workspace(tmp_path / "workspace", n=30)


def audit(ws, judge: ScriptedJudge, model: str, n: int = 3):
    ids = list(ws.load_pairs(DATASET)["pair_id"])[:n]
    params = audit_params(DATASET, {"random": ids}, Endpoint(model, judge.base_url, timeout=10), concurrency=1)
    return submit_audit(ws, params)


def test_no_decisive_pair_says_why_and_shows_dashes(ws):
    with ScriptedJudge(answer=lambda request: json.dumps({"winner": "A", "rationale": "A is first"})) as judge:
        job = audit(ws, judge, "judge-by-position")
        assert job.wait(poll=0.1, timeout=120).state == "done", job.log_tail()
    at = app_test("audit_page.py", ws)
    at.run()
    no_errors(at)
    assert not at.get("plotly_chart")  # no chart of empty bars
    (note,) = [i.value for i in at.info if "No decisive pair" in i.value]
    assert "in each of the 3 pairs answered in both orders" in note and "by position" in note
    assert " yet" not in note  # the audit is over
    (row,) = at.dataframe[0].value.to_dict("records")  # what the browser draws: "—", never "None"
    assert row["subset"] == "random" and row["decisive"] == 0
    assert (row["agreement"], row["ci_low"], row["ci_high"]) == ("—", "—", "—")
    assert (row["position_consistency"], row["kappa"]) == ("0%", "0.00")
    verdicts = at.dataframe[1].value
    assert len(verdicts) == 3 and set(verdicts["agrees"]) == {"—"} and set(verdicts["judge_label"]) == {"—"}
    assert set(verdicts["consistent"]) == {"no"} and set(verdicts["ab_answer"]) == {"A"}
    assert not verdicts.isna().any().any()


def test_a_finished_audit_with_decisive_pairs_still_draws_its_chart(ws):
    def reads(request) -> str:  # the dataset's chosen responses never hedge: a judge that reads agrees
        return json.dumps({"winner": "B" if "I think" in request.pair[0] else "A"})

    with ScriptedJudge(answer=reads) as judge:
        job = audit(ws, judge, "judge-reads")
        assert job.wait(poll=0.1, timeout=120).state == "done", job.log_tail()
    at = app_test("audit_page.py", ws)
    at.run()
    no_errors(at)
    assert not [i for i in at.info if "No decisive pair" in i.value]
    assert len(at.get("plotly_chart")) == 1
    (row,) = at.dataframe[0].value.to_dict("records")
    assert (row["agreement"], row["position_consistency"]) == ("100%", "100%")
    assert set(at.dataframe[1].value["agrees"]) == {"yes"}


def test_the_audit_selector_label_follows_the_job_to_done(ws):
    release = threading.Event()

    def answer(request):  # the judge answers only once the test has seen the job live
        release.wait(timeout=120)
        return json.dumps({"winner": "A"})

    with ScriptedJudge(answer=answer) as judge:
        job = audit(ws, judge, "judge-slow", n=1)
        at = app_test("audit_page.py", ws)
        at.run()
        no_errors(at)
        selector = at.selectbox(key="_audit_job")
        live_label = selector.proto.options[0]
        assert live_label.endswith(("· queued", "· running")), live_label
        release.set()
        assert job.wait(poll=0.1, timeout=120).state == "done", job.log_tail()
    at.run()  # what the job panel's rerun does when it sees the job end
    no_errors(at)
    selector = at.selectbox(key="_audit_job")
    done_label = live_label.rsplit(" · ", 1)[0] + " · done"
    assert list(selector.proto.options) == [done_label]
    # the browser holds the label it drew as the value: the page must send the new one
    assert selector.proto.set_value and selector.proto.raw_value == done_label
    at.run()  # and only when it changed: the user's own picks are not overridden on every run
    assert not at.selectbox(key="_audit_job").proto.set_value


def test_hints_are_in_the_dashboards_words(tmp_path):
    ws = Workspace(tmp_path / "workspace")
    source = tmp_path / "plain.jsonl"
    rows = [{k: v for k, v in r.items() if not k.startswith("score_")} for r in records(20)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    import_dataset(source, DATASET, ws)
    write_policy(ws, DATASET)
    with ScriptedJudge(answer=lambda request: json.dumps({"winner": "A"})) as judge:
        job = audit(ws, judge, "judge-words", n=2)
        assert job.wait(poll=0.1, timeout=120).state == "done", job.log_tail()
    at = app_test("audit_page.py", ws)
    at.run()
    no_errors(at)
    shown = [el.value for el in (*at.info, *at.caption, *at.markdown, *at.warning)]
    assert not [text for text in shown if "marginlens " in text or "--" in text], shown
    (note,) = [text for text in shown if text.startswith("No explicit margin")]
    assert "on the Score page" in note
    (link,) = at.get("page_link")
    assert link.proto.label == "Add an explicit margin on the Score page" and link.proto.page.endswith("score")
    assert any('the Export page applies them unless its "Apply audit flags" switch is off' in c for c in shown)
