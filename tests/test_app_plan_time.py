"""The Experiments and Self-play pages' plans with time, the estimate against what a finished run took, the
training-settings box empty with its example marked as one, and an Experiments page whose first load imports
neither the training stack (torch, transformers, trl) nor the Theory tab's scipy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_app import app_test, no_errors, serve_config
from helpers_experiment import DATASET, build_dataset
from marginlens.core.experiments.experiment_spec import build_spec
from marginlens.core.run_estimate import record_estimate
from marginlens.core.scoring.models import DEFAULT_POLICY

TESTS = Path(__file__).resolve().parent
HEAVY = ("torch", "transformers", "trl", "scipy.stats")


@pytest.fixture
def lab_ws(tmp_path, monkeypatch):
    serve_config(monkeypatch, tmp_path / "serve", data_roots=[tmp_path])
    # the policy table recorded as scored with the page's default starting model: the plan runs as it loads
    return build_dataset(tmp_path / "workspace", policy=DEFAULT_POLICY)


def box(at) -> str:
    """The page's markdown with md_escape's backslashes taken out again."""
    return "\n".join(m.value for m in at.markdown).replace("\\", "")


def test_the_experiment_plan_shows_time_and_an_empty_settings_box(lab_ws):
    at = app_test("experiments_page.py", lab_ws)
    at.run()
    no_errors(at)
    shown = box(at)
    assert "time: about" in shown and "on cpu (training 12 run(s)" in shown, shown
    assert "rates used: training 0.1-2 pairs/s (default for cpu)" in shown
    assert "learning rate per step (cosine): 1e-06" in shown  # the 1-step runs' warmup, clamped
    settings = at.text_area(key="_exp_settings")
    assert settings.value == ""
    assert settings.placeholder.startswith("empty: the preset's settings. Example, not applied:")
    # the Theory tab's simulation does not run until the tab is opened
    assert [t.label for t in at.tabs] == ["Lab", "Theory"]
    assert not at.get("plotly_chart") and not at.metric


def test_a_finished_experiment_shows_its_estimate_against_what_it_took(lab_ws):
    spec = build_spec(lab_ws, DATASET, eval="verifier:answer-match", policy=DEFAULT_POLICY, device="cpu")
    folder = lab_ws.jobs_dir / "exp0finished0"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"kind": "experiment", "params": spec.to_params(),
                                                  "created": "2026-12-07T10:00:00Z"}))
    (folder / "status.json").write_text(json.dumps({"state": "done", "started": "2026-12-07T10:00:00Z",
                                                    "finished": "2026-12-07T10:42:00Z", "done": 1, "total": 1}))
    record_estimate(folder, {"seconds": [600.0, 1800.0], "disk": [10_000_000, 20_000_000]})
    at = app_test("experiments_page.py", lab_ws)
    at.run()
    no_errors(at)
    captions = [c.value.replace("\\", "") for c in at.caption]
    assert "Estimate vs actual · time: estimated 10 min to 30 min, took 42 min (above the estimate)" in captions
    assert any(c.startswith("Estimate vs actual · disk: estimated 10.0 MB to 20.0 MB") for c in captions), captions


def test_the_selfplay_plan_shows_time(lab_ws):
    at = app_test("selfplay_page.py", lab_ws)
    at.run()
    no_errors(at)
    shown = box(at)
    assert "time: about" in shown and "sampling x2" in shown and "evaluating a model x5" in shown, shown
    assert "each round, at most: learning rate" in shown


def test_the_first_load_of_the_experiments_page_imports_no_training_stack(lab_ws):
    script = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from helpers_app import app_test
from marginlens.core.workspace import Workspace
at = app_test("experiments_page.py", Workspace({str(lab_ws.root)!r}))
at.run(timeout=120)
shown = "\\n".join(m.value for m in at.markdown).replace(chr(92), "")
print([e.value for e in at.error], "time: about" in shown, [m for m in {HEAVY!r} if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    # the plan was made (so the settings were resolved) without importing any of them
    assert out.stdout.strip().splitlines()[-1] == "[] True []", out.stdout + out.stderr[-2000:]


def test_the_self_play_settings_box_is_empty_with_an_example_that_says_it_is_not_applied(lab_ws):
    at = app_test("selfplay_page.py", lab_ws)
    at.run(timeout=120)
    no_errors(at)
    settings = at.text_area(key="_sp_settings")
    assert settings.value in ("", None)
    assert settings.placeholder.startswith("empty: the preset's settings. Example, not applied:")
