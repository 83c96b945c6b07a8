"""Issue 12, Train page: the derived values follow the form as it is edited, name gamma only for SimPO,
warmup_steps says it may be a ratio, an effective batch beyond the export is warned about, and the run
settings are not an st.form (where Enter submits; the browser test checks Enter itself)."""

from __future__ import annotations

import math

import pytest
from helpers_app import DATASET, POLICY_FP, app_test, build_workspace, no_errors
from marginlens.app.explore_view import ExploreControls, compute_view
from marginlens.core import jobs
from marginlens.core.selection.export import export_selection
from marginlens.core.selection.margins import load_margins

CPU = "_train_f_dpo_dpo-paper_cpu_"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = build_workspace(tmp_path_factory.mktemp("train-form") / "workspace", n=75)
    margins = load_margins(ws, DATASET, policy_fp=POLICY_FP)
    export_selection(ws, DATASET, compute_view(margins, ExploreControls(ratio=0.5)).selection, margins, "cut.jsonl")
    return ws


def _derived(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Derived from the values above"))


def test_derived_values_follow_the_form_and_warn_past_the_export(ws):
    at = app_test("train_page.py", ws)
    at.run()
    at.selectbox(key="_train_device").set_value("cpu").run()
    no_errors(at)
    assert not at.get("form")  # Enter in a form field would submit it
    batch = at.number_input(key=CPU + "effective_batch_size").value
    per_device = at.number_input(key=CPU + "per_device_train_batch_size").value
    assert f"`gradient_accumulation_steps` = {math.ceil(batch / per_device)}: effective batch {batch}" in _derived(at)
    assert "gamma" not in _derived(at)  # a DPO run has none
    assert any("larger than the export (38 pairs)" in w.value for w in at.warning) == (batch > 38)
    assert at.number_input(key=CPU + "warmup_steps").label == "warmup_steps (below 1: a share of all steps)"

    at.number_input(key=CPU + "effective_batch_size").set_value(per_device * 3).run()
    assert f"`gradient_accumulation_steps` = 3: effective batch {per_device * 3}" in _derived(at)
    assert not any("larger than the export" in w.value for w in at.warning)
    at.number_input(key=CPU + "effective_batch_size").set_value(64).run()
    assert any("effective batch (64 pairs per optimizer step) is larger than the export (38 pairs)" in w.value
               for w in at.warning)
    assert jobs.list_jobs(ws, kind="train") == []  # editing launches nothing

    at.radio(key="_train_method").set_value("simpo").run()
    no_errors(at)
    assert "`simpo_gamma` = " in _derived(at) and "gamma_beta_ratio" in _derived(at)
