"""The start page: M_AP in two lines, then the picked dataset's checklist (core.workspace_progress), each open
step a button that opens the page that does it with that setting chosen. Through app/main.py's own navigation
(AppTest follows st.switch_page), on real imports and real score tables."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest
from helpers_app import app_test, build_workspace, no_errors, records, serve_config, write_policy
from marginlens.app import navigation, score_form
from marginlens.core import actor
from marginlens.core.data.ingest import import_dataset
from marginlens.core.scoring.llm_rating import TABLE_PREFIX
from marginlens.core.scoring.score_tables import save_score_table
from marginlens.core.selection.export import export_selection
from marginlens.core.selection.margins import default_margins
from marginlens.core.selection.select import SelectionSpec, select
from marginlens.core.workspace import Workspace
from marginlens.core.workspace_progress import dataset_progress
from streamlit.testing.v1 import AppTest

MAIN = os.path.join(os.path.dirname(__file__), "..", "app", "main.py")
UNSCORED = "unscored"


def unscored_workspace(root) -> Workspace:
    """A dataset imported without reward scores (as HH-RLHF is): only its texts."""
    ws = Workspace(root)
    source = root.parent / "unscored.jsonl"
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records(80)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    import_dataset(source, UNSCORED, ws)
    return ws


def rating_table(ws: Workspace, dataset: str, n: int) -> None:
    """An LLM-rating table holding the first n pairs (a sampled rating)."""
    ids = ws.load_pairs(dataset).data.table.column("pair_id").to_pylist()[:n]
    rng = np.random.default_rng(0)
    save_score_table(ws, dataset, TABLE_PREFIX + "test", "reward", pa.table({
        "pair_id": ids, "chosen_reward": rng.integers(1, 11, n).astype(float),
        "rejected_reward": rng.integers(1, 11, n).astype(float), "truncated": np.zeros(n, dtype=bool)}),
        model="rater-model", spec={"role": "llm_rating"})


def main_app(ws: Workspace, tmp_path, monkeypatch) -> AppTest:
    serve_config(monkeypatch, tmp_path / "serve")  # auth none: the operator
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["workspace"] = ws
    return at


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


def state_of(at, title: str) -> str:
    """The step's line on the page, e.g. "**Explicit margin (m_ex)** · to do  \\nnone: ..."."""
    return next(m.value for m in at.markdown if f"**{title}**" in m.value)


def test_progress_follows_what_the_workspace_holds(tmp_path):
    ws = unscored_workspace(tmp_path / "ws")
    steps = {s.key: s for s in dataset_progress(ws, UNSCORED, default_margins(ws, UNSCORED)).steps}
    assert [steps[k].state for k in ("import", "explicit", "implicit", "audit", "export")] == \
        ["done", "todo", "todo", "todo", "todo"]
    assert steps["explicit"].detail == "none: the dataset has no scores of its own"

    write_policy(ws, UNSCORED)
    rating_table(ws, UNSCORED, 30)
    frame = default_margins(ws, UNSCORED)
    steps = {s.key: s for s in dataset_progress(ws, UNSCORED, frame).steps}
    assert (steps["explicit"].state, steps["explicit"].count, steps["explicit"].source) == ("partial", 30, "rating")
    assert "rater-model: 30 of 80 pairs" in steps["explicit"].detail
    assert (steps["implicit"].state, steps["implicit"].count) == ("done", 80)

    selection = select(frame, SelectionSpec(metric="map", ratio=0.5))
    export_selection(ws, UNSCORED, selection, frame, "first.jsonl")
    export = dataset_progress(ws, UNSCORED, frame).step("export")
    assert export.state == "done" and "first.jsonl" in export.detail


def test_the_app_opens_on_the_start_page_and_a_dataset_without_scores_goes_to_an_llm_rating_sample(
        tmp_path, monkeypatch):
    at = main_app(unscored_workspace(tmp_path / "ws"), tmp_path, monkeypatch)
    at.run()
    no_errors(at)
    assert [t.value for t in at.title] == ["Start"]
    assert "M_AP" in at.markdown[0].value and "explicit margin" in at.markdown[0].value
    assert "· to do" in state_of(at, "Explicit margin (m_ex)")
    assert any("no reward scores" in i.value and "Score page" in i.value for i in at.info)
    button(at, "Rate 30 pairs with an LLM").click().run()
    no_errors(at)
    assert [t.value for t in at.title] == ["Score"]
    assert at.radio(key=score_form.SOURCE_KEY).value == "llm_rating"
    assert at.number_input(key=score_form.SAMPLE_KEY).value == 30
    # the page's own hint is in its words, not a command
    assert not any("marginlens score" in i.value for i in at.info)


def test_the_implicit_only_route_and_the_finished_steps(tmp_path, monkeypatch):
    ws = unscored_workspace(tmp_path / "ws")
    at = main_app(ws, tmp_path, monkeypatch)
    at.run()
    button(at, "Score the policy on 30 pairs").click().run()
    assert at.radio(key=score_form.SOURCE_KEY).value == score_form.DATASET_SOURCE  # no explicit scorer
    assert at.number_input(key=score_form.SAMPLE_KEY).value == 30

    write_policy(ws, UNSCORED)
    rating_table(ws, UNSCORED, 30)
    again = main_app(ws, tmp_path, monkeypatch)
    again.run()
    no_errors(again)
    assert "· part of the dataset" in state_of(again, "Explicit margin (m_ex)")
    assert "· done" in state_of(again, "Implicit margin (m_im)")
    assert "Rate 30 pairs with an LLM" not in [b.label for b in again.button]
    button(again, "Score more pairs").click().run()
    assert again.radio(key=score_form.SOURCE_KEY).value == "llm_rating"


def test_score_page_source_defaults_to_what_the_dataset_has(tmp_path):
    unscored = unscored_workspace(tmp_path / "ws")
    at = app_test("score_page.py", unscored)
    at.run()
    no_errors(at)
    assert at.radio(key=score_form.SOURCE_KEY).value == "llm_rating"
    assert "implicit margin only" in score_form.source_label(score_form.DATASET_SOURCE, False)

    scored = build_workspace(tmp_path / "scored", n=40)  # imported with score_chosen / score_rejected
    at = app_test("score_page.py", scored)
    at.run()
    assert at.radio(key=score_form.SOURCE_KEY).value == score_form.DATASET_SOURCE
    assert at.number_input(key=score_form.SAMPLE_KEY).value == 0


def test_a_source_picked_by_the_user_stays_until_the_dataset_changes():
    state: dict = {}
    score_form.settle_source(state, "hh", own_scores=False)
    assert state[score_form.SOURCE_KEY] == "llm_rating"
    state[score_form.SOURCE_KEY] = "reward_model"
    score_form.settle_source(state, "hh", own_scores=False)
    assert state[score_form.SOURCE_KEY] == "reward_model"
    score_form.settle_source(state, "demo", own_scores=True)
    assert state[score_form.SOURCE_KEY] == score_form.DATASET_SOURCE
    score_form.settle_source(state, "demo", own_scores=True, arrival={"source": "llm_rating", "sample": 30})
    assert (state[score_form.SOURCE_KEY], state[score_form.SAMPLE_KEY]) == ("llm_rating", 30)


def test_a_viewer_sees_the_checklist_without_operate_buttons(tmp_path, monkeypatch):
    assert "start" in navigation.VIEWER_PAGES and navigation.DEFAULT_PAGE == "start"
    ws = unscored_workspace(tmp_path / "ws")
    monkeypatch.setattr(actor, "_DEFAULT", actor.Actor("viewer", may_write=False))
    at = app_test("start_page.py", ws)
    at.run()
    no_errors(at)
    assert "· to do" in state_of(at, "Explicit margin (m_ex)")
    assert not at.button
    assert any("viewer" in c.value for c in at.caption)


def test_without_a_dataset_the_demo_is_one_click(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "empty")
    at = main_app(ws, tmp_path, monkeypatch)
    at.run()
    no_errors(at)
    assert any("No dataset yet" in i.value for i in at.info)
    button(at, "Add the demo dataset").click().run()
    no_errors(at)
    assert ws.dataset_names() == ["demo"]
    assert "· done" in state_of(at, "Implicit margin (m_im)")  # the demo ships its policy table


@pytest.mark.parametrize("page", ["data_page.py", "export_page.py", "train_page.py", "score_page.py"])
def test_page_hints_are_dashboard_words(tmp_path, page):
    """No CLI command in a hint for what the dashboard can do: only --data-root (set at launch) and the
    paper's reward model (it runs its own code, which only the command line allows) keep theirs."""
    ws = unscored_workspace(tmp_path / "ws") if page != "data_page.py" else Workspace(tmp_path / "empty")
    at = app_test(page, ws)
    at.run()
    no_errors(at)
    said = [e.value for e in (*at.info, *at.caption, *at.markdown)]
    commands = [s for s in said if "marginlens " in s and "--data-root" not in s and "--trust-remote-code" not in s]
    assert not commands, commands
    if page == "data_page.py":
        assert any("demo" in s and "button" in s for s in said)


def test_the_export_hint_names_the_score_page(tmp_path):
    at = app_test("export_page.py", unscored_workspace(tmp_path / "ws"))
    at.run()
    no_errors(at)
    assert any("On the Score page" in i.value and "LLM rating" in i.value for i in at.info)
