"""Audit page: plan and estimate an audit, start it (a real worker process judging through a real scripted
OpenAI-compatible server on 127.0.0.1, picked as "another URL" with a key typed beside it), cancel and resume it,
read the chart and the verdicts, and flag pairs; the key typed into the page never reaches a file, and judge/pair
texts never reach markdown. Where keys must not go is in test_app_attacks.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers_app import DATASET, app_test, build_workspace, metrics, no_errors
from judge_server import Request, ScriptedJudge
from marginlens.core.audit.audit_job import list_audits, submit_audit, verdict_record
from marginlens.core.audit.audit_params import AuditParams, audit_params
from marginlens.core.audit.audit_report import disagreements
from marginlens.core.audit.judge_prompt import chosen_position
from marginlens.core.chat_client import Completion, Endpoint
from marginlens.core.data.flags import load_flags
from marginlens.core.verdicts import VerdictStore

KEY = "sk-audit-page-SECRET-77f3a1"


@pytest.fixture
def ws(tmp_path):
    return build_workspace(tmp_path / "workspace", n=30)


def button(at, label: str):
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r}: {[b.label for b in at.button]}"
    return found[0]


def wait_state(job, states: tuple[str, ...], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (state := job.status().state) not in states:
        assert time.monotonic() < deadline, f"job stayed {state}; log:\n{job.log_tail()}"
        time.sleep(0.1)
    return state


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_page_without_audit_and_a_bad_plan(ws):
    at = app_test("audit_page.py", ws)
    at.run()
    no_errors(at)
    assert any("No audit of this dataset yet" in el.value for el in at.info)
    key_field = at.text_input(key="_audit_endpoint_key")
    assert key_field.proto.type == key_field.proto.PASSWORD
    button(at, "Estimate cost").click().run()  # no endpoint picked
    (error,) = [e.value for e in at.error]
    assert "pick a configured endpoint" in error
    at.text_input(key="_audit_endpoint_url").input("http://127.0.0.1:9/v1")
    button(at, "Estimate cost").click().run()  # no judge model given
    assert [e.value for e in at.error] == ["the judge model name is empty"]
    assert not [b for b in at.button if b.label == "Start audit"]


def test_estimate_start_cancel_resume_report_and_flags(ws):
    table = ws.load_pairs(DATASET)
    texts = {row["pair_id"]: (row["chosen"], row["rejected"]) for row in table}
    noisy = set(list(texts)[::2])  # the judge reverses every other pair
    preferred = {(r if pid in noisy else c) for pid, (c, r) in texts.items()}

    def answer(request: Request) -> str:
        letter = "A" if request.pair[0] in preferred else "B"
        return json.dumps({"winner": letter, "rationale": f"**{letter}** <b>wins</b>"})

    at = app_test("audit_page.py", ws)
    at.run()
    with ScriptedJudge(answer=answer, delay=0.05) as judge:
        at.text_input(key="_audit_endpoint_key").input(KEY)
        at.text_input(key="_audit_endpoint_url").input(judge.base_url)
        at.text_input(key="_audit_model").input("judge-page")
        at.number_input(key="_audit_n").set_value(3)
        at.number_input(key="_audit_concurrency").set_value(1)
        at.number_input(key="_audit_timeout").set_value(5.0)
        button(at, "Estimate cost").click().run()
        no_errors(at)
        shown = metrics(at)
        pairs = int(shown["Pairs"])
        assert 3 <= pairs <= 12 and shown["Calls to make"] == str(2 * pairs) and shown["Cost"] == "—"
        assert judge.requests == []  # estimating sends nothing

        button(at, "Start audit").click().run()
        no_errors(at)
        (job,) = list_audits(ws, DATASET)
        assert any(job.id in el.value for el in at.success)
        assert "sk-" not in json.dumps(job.spec)
        button(at, "Cancel").click().run()  # from the polling panel
        assert wait_state(job, ("cancelled", "done")) == "cancelled"
        at.run()
        button(at, "Resume").click().run()
        no_errors(at)
        assert wait_state(job, ("done", "failed")) == "done", job.log_tail()
        assert job.status().resumed is True
        assert judge.requests and {r.authorization for r in judge.requests} == {f"Bearer {KEY}"}

    at.run()
    no_errors(at)
    (chart,) = at.get("plotly_chart")
    assert json.loads(chart.proto.spec)["data"][0]["x"] == ["map", "explicit", "implicit", "random"]
    stats = at.dataframe[0].value
    assert list(stats["subset"]) == ["map", "explicit", "implicit", "random"] and (stats["n"] == 3).all()
    verdicts = at.dataframe[1].value
    assert len(verdicts) == pairs and set(verdicts["pair_id"]) <= set(texts)
    reversed_ids = disagreements(ws, DATASET, "judge-page", pair_ids=list(verdicts["pair_id"]))
    assert reversed_ids and set(reversed_ids) == set(verdicts["pair_id"]) & noisy
    assert set(verdicts.loc[verdicts["agrees"].eq("no"), "pair_id"]) == set(reversed_ids)
    assert verdicts["ab_rationale"].str.contains("<b>wins</b>", regex=False).all()  # kept verbatim, as data

    # untrusted texts (judge rationales, pair texts) are never rendered as markdown
    untrusted = ["<b>wins</b>", *[t for pid in verdicts["pair_id"] for t in texts[pid]]]
    rendered = [el.value for el in (*at.markdown, *at.caption, *at.success, *at.info, *at.warning)]
    assert not [t for t in untrusted if any(t in r for r in rendered)]
    selected_texts = texts[at.selectbox(key="_audit_pair").value]
    assert set(selected_texts) <= {el.value for el in at.code}  # shown, as plain text

    # flag the selected pair (the first the judge reverses, preselected), then every disagreement
    assert at.selectbox(key="_audit_pair").value == reversed_ids[0]
    at.radio(key="_audit_action").set_value("swap")
    at.button(key="_audit_flag").click().run()
    no_errors(at)
    assert {pid: f["action"] for pid, f in load_flags(ws, DATASET).items()} == {reversed_ids[0]: "swap"}
    assert load_flags(ws, DATASET)[reversed_ids[0]]["judge_model"] == "judge-page"
    assert at.dataframe[1].value.set_index("pair_id").loc[reversed_ids[0], "flag_action"] == "swap"

    ordinary = next(pid for pid in verdicts["pair_id"] if pid not in reversed_ids)
    at.selectbox(key="_audit_pair").set_value(ordinary)
    at.radio(key="_audit_action").set_value("exclude")
    at.button(key="_audit_flag").click().run()
    at.button(key="_audit_unflag").click().run()
    assert ordinary not in load_flags(ws, DATASET)
    at.button(key="_audit_flag_all").click().run()
    no_errors(at)
    flags = load_flags(ws, DATASET)
    assert set(flags) == set(reversed_ids) and {f["action"] for f in flags.values()} == {"exclude"}
    assert files_containing(ws.root, KEY) == []


def _audit_without_calls(ws, ids: list[str], model: str):
    """An audit job that made no call (a budget of none): its verdicts are then written here, as they arrive."""
    with ScriptedJudge() as judge:
        params = audit_params(DATASET, {"random": ids}, Endpoint(model, judge.base_url), max_calls=0)
        job = submit_audit(ws, params)
        assert job.wait(timeout=60).state == "done", job.log_tail()
    return params, job


def test_a_pair_the_user_picks_stays_even_when_it_was_the_pages_pick(ws):
    ids = list(ws.load_pairs(DATASET)["pair_id"])[:3]
    params, job = _audit_without_calls(ws, ids, "judge-pick")
    store = VerdictStore.for_dataset(ws, DATASET)

    def judged(pid: str, prefers_chosen: bool) -> None:
        for order in ("AB", "BA"):
            letter = chosen_position(order) if prefers_chosen else {"A": "B", "B": "A"}[chosen_position(order)]
            store.append(verdict_record(pid, order, Completion(letter, letter, 1, 1, 1), params.endpoint,
                                        params.prompt_version, job.id))

    judged(ids[0], True)
    judged(ids[1], True)
    at = app_test("audit_page.py", ws)
    at.run()
    no_errors(at)
    assert at.selectbox(key="_audit_pair").value == ids[0]  # the page's pick: no reversed pair yet
    at.selectbox(key="_audit_pair").set_value(ids[1]).run()
    at.selectbox(key="_audit_pair").set_value(ids[0]).run()  # the user picks it back, on purpose
    judged(ids[2], False)  # a reversed pair arrives
    at.run()
    no_errors(at)
    assert at.selectbox(key="_audit_pair").value == ids[0]


def test_an_audit_sampling_no_pair_reads_as_no_verdict(ws):
    ids = list(ws.load_pairs(DATASET)["pair_id"])[:1]
    params, _ = _audit_without_calls(ws, ids, "judge-none")
    empty = AuditParams.from_dict({**params.to_dict(), "samples": {}})  # a spec no plan would write
    assert submit_audit(ws, empty, check=False).wait(timeout=60).state == "done"
    at = app_test("audit_page.py", ws)
    at.run()
    at.selectbox(key="_audit_job").set_value(list_audits(ws, DATASET)[0].id).run()
    no_errors(at)
    assert any("No verdict yet" in i.value for i in at.info)
