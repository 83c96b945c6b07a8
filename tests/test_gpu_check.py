"""bench/gpu_check.py's CPU dry run: every section runs (tiny configs) in its own child process, the JSON
report holds each section's numbers, the table comes last; a failing section loses only itself, and a
section that would overrun the budget is skipped with the reason."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tiny_models import ONE_THREAD_ENV

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"


def _run(tmp_path: Path, *extra: str, timeout: float = 400) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "report" / "gpu_check.json"
    env = {**os.environ, **ONE_THREAD_ENV, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--workdir",
                           str(tmp_path / "work"), *extra], capture_output=True, text=True, env=env, timeout=timeout)
    assert out.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def test_dry_run_runs_every_section_and_reports_it(tmp_path):
    proc, report = _run(tmp_path)
    sections = report["sections"]
    assert proc.returncode == 0, proc.stdout + json.dumps(sections, indent=1)[-4000:]
    assert list(sections) == ["environment", "fidelity", "mfu", "packing", "processes", "dpo"]
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(sections, "ok")
    table = proc.stdout.strip().splitlines()[-7:]  # the short table is printed last
    assert table[0].split()[:2] == ["section", "status"] and [row.split()[0] for row in table[1:]] == list(sections)

    assert sections["environment"]["torch"] and sections["environment"]["bf16_matmul_tflops"] > 0
    fidelity = sections["fidelity"]
    assert fidelity["model_kind"].startswith("tiny random-init") and fidelity["pairs"] == 12
    assert fidelity["packed_vs_padded_fp32_max_abs_diff"] < 1e-3 and fidelity["packed_vs_padded_fp32_ntok_equal"]
    assert fidelity["packed_kernel_calls"]["sdpa_per_document"] > 0  # the packed path really ran
    assert 0 < fidelity["token_logp_mean_abs_diff"] <= fidelity["token_logp_max_abs_diff"]  # bf16 really is bf16
    assert fidelity["margin_spearman"] > 0.8 and 0 < fidelity["top40_jaccard"] <= 1

    mfu, packing = sections["mfu"], sections["packing"]
    assert mfu["pairs"] == mfu["pairs_planned"] and mfu["tokens_per_s"] > 0 and mfu["mfu"] > 0
    assert packing["packed"]["packing"] is True and packing["padded"]["packing"] is False
    assert packing["compared_pairs"] == mfu["pairs_planned"] and packing["kernel"] == "sdpa_per_document"
    assert packing["logp_max_abs_diff"] < 0.01 * packing["logp_mean_abs"]  # bf16 both ways, other shapes
    assert 0 <= packing["padded_plan_padding_fraction"] < 1 and packing["speedup_pairs_per_s"] > 0

    processes = sections["processes"]
    assert processes["equal_to_one_process"] and processes["ranks"] == ["rank0", "rank1"]
    dpo = sections["dpo"]
    assert dpo["steps"] == 2 and all(math.isfinite(x) and 0.3 < x < 1.0 for x in dpo["losses"])


def test_a_failing_section_loses_only_itself_and_the_budget_skips(tmp_path):
    proc, report = _run(tmp_path, "--only", "environment,fidelity", "--data", str(tmp_path / "missing.jsonl"))
    sections = report["sections"]
    assert proc.returncode == 1
    assert sections["environment"]["status"] == "ok"
    assert sections["fidelity"]["status"] == "failed" and "missing.jsonl" in sections["fidelity"]["error"]
    assert "missing.jsonl" in proc.stdout.strip().splitlines()[-1]  # the table says why
    proc, report = _run(tmp_path, "--only", "dpo", "--budget-s", "5")
    assert report["sections"]["dpo"] == {"status": "skipped", "reason": "only 5 s of the budget left"}


def test_ranks_share_the_gpus_round_robin(monkeypatch):
    """`marginlens score --processes 2` on a machine with fewer GPUs than ranks: both ranks use cuda:0
    (the GPU run of bench/gpu_check.py checks the merged table; this machine has no GPU, so count 0 -> 1)."""
    import types

    import torch
    from marginlens.core.scoring.score_job import _rank_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for local in ("0", "1"):
        monkeypatch.setenv("LOCAL_RANK", local)
        assert _rank_device("cuda", types.SimpleNamespace(rank=int(local), world_size=2)) == "cuda:0"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _rank_device("cuda", types.SimpleNamespace(rank=1, world_size=2)) == "cuda:1"
    assert _rank_device("cpu", types.SimpleNamespace(rank=1, world_size=2)) == "cpu"
