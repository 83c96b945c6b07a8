"""bench/gpu_evidence.py's CPU dry run: the GPU run's code path end to end (the lab on the demo, a table with
intervals, the budget line), so the lent GPU's minutes never go to finding a broken script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tiny_models import smollm2  # noqa: F401  (session fixture: the demo's policy, offline)

ROOT = Path(__file__).resolve().parent.parent


def test_the_dry_run_trains_evaluates_and_writes_a_table_with_intervals(tmp_path, smollm2):  # noqa: F811
    out = tmp_path / "evidence.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_evidence.py"), "--dry-run", "--workspace", str(tmp_path / "ws"), "--out", str(out)],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "budget" in run.stdout
    result = json.loads(out.read_text())
    rows = {row["metric"]: row for row in result["table"]["rows"]}
    assert set(rows) == {"map", "random"}
    for row in rows.values():
        assert len(row["values"]) == 2 and row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert result["table"]["baseline"]["n"] == 4  # every question of the (shrunk) eval set
    assert len(result["first_step_s"]) == 4 and not result["child_processes"]
