"""The pages on a dataset scored in part (a sampled scoring) say "N of M pairs scored"; the Data page's
switch for empty responses (keep and flag, or reject)."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
from helpers_app import DATASET, app_test, build_workspace, metrics, no_errors, serve_config
from marginlens.core import jobs
from marginlens.core.job_status import JobState
from marginlens.core.scoring.score_tables import save_score_table
from marginlens.core.workspace import Workspace

N = 40  # + the adversarial pair build_workspace adds


def partial_workspace(tmp_path) -> Workspace:
    ws = build_workspace(tmp_path / "workspace", n=N)
    ids = ws.load_pairs(DATASET)["pair_id"][::2]  # 21 of 41 pairs, in a newer table than the full one
    n = len(ids)
    save_score_table(ws, DATASET, "sampled", "logprob", pa.table({
        "pair_id": ids, "chosen_logp": -np.arange(n, dtype=float) - 1, "chosen_ntok": np.full(n, 2),
        "rejected_logp": np.full(n, -3.0), "rejected_ntok": np.full(n, 2), "truncated": np.zeros(n, dtype=bool),
    }), model="test-policy", spec={"role": "policy"})
    return ws


def captions(at) -> str:
    return "\n".join(c.value for c in at.caption)


def test_export_and_audit_pages_say_how_many_pairs_are_scored(tmp_path):
    ws = partial_workspace(tmp_path)
    at = app_test("export_page.py", ws)
    at.run()
    no_errors(at)
    assert "21 of 41 pairs scored" in captions(at)
    assert metrics(at)["Candidates"] == "21"
    at = app_test("audit_page.py", ws)
    at.run()
    no_errors(at)
    assert "21 of 41 pairs scored" in captions(at)


def _import(at, ws, source, name: str, empty: str, policy: str) -> JobState:
    at.text_input(key="_data_server_path").input(str(source))
    next(t for t in at.text_input if t.label == "Name").input(name)
    next(s for s in at.selectbox if s.label == "Bad rows").set_value(policy)
    at.radio(key="_data_empty_responses").set_value(empty)
    at.button[0].click().run()
    job = next(j for j in jobs.list_jobs(ws, "import") if j.spec["params"]["name"] == name)
    state = job.wait(poll=0.1, timeout=60).state
    at.run()
    return state


def test_data_page_switch_keeps_and_flags_or_rejects_empty_responses(tmp_path, monkeypatch):
    serve_config(monkeypatch, tmp_path / "serve", data_roots=[tmp_path])  # the source below is a server path
    ws = Workspace(tmp_path / "workspace")
    source = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "Q?", "chosen": "yes", "rejected": "no"}, {"prompt": "Harm?", "chosen": "", "rejected": "Sure."}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    at = app_test("data_page.py", ws)
    at.run()
    assert at.radio(key="_data_empty_responses").value == "keep"  # the default
    assert _import(at, ws, source, "rejecting", "reject", "strict") is JobState.FAILED
    shown = [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]  # as read: markdown escapes removed
    assert any("line 2" in m and "--empty-responses keep" in m for m in shown), shown
    assert _import(at, ws, source, "kept", "keep", "strict") is JobState.DONE
    assert ws.dataset_manifest("kept")["flagged"] == {"empty_response": 1}
    assert metrics(at)["Pairs"] == "2"
    assert metrics(at)["Kept with flags"] == "1"
    assert any("empty_response" in m.value for m in at.markdown)


def test_score_page_passes_the_sample_to_the_scoring(tmp_path):
    """Dataset columns as the explicit margin need no job: the page says what the sample covers."""
    ws = build_workspace(tmp_path / "workspace", n=N)
    at = app_test("score_page.py", ws)
    at.run()
    at.text_input(key="_score_policy").input("")  # no policy
    at.radio[0].set_value("columns")
    at.text_input(key="_score_explicit_value").input("score_chosen,score_rejected")
    next(n for n in at.number_input if n.label.startswith("Sample (pairs")).set_value(5)
    next(b for b in at.button if b.label == "Start scoring").click().run()
    no_errors(at)
    assert at.success and "a sample of 5 of 41 pairs" in at.success[0].value


def test_unscored_pairs_are_blamed_on_the_sample_not_on_the_metric(tmp_path):
    from marginlens.core.selection.margins import default_margins
    from marginlens.core.selection.select import SelectionSpec, select

    ws = partial_workspace(tmp_path)
    margins = default_margins(ws, DATASET)
    for metric in ("random", "implicit"):
        warnings = select(margins, SelectionSpec(metric=metric, ratio=0.5)).warnings
        assert "21 of 41 pairs scored: selecting from the scored pairs" in warnings
        assert not any("lack the margins" in w for w in warnings), warnings
