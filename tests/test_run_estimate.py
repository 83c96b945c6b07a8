"""Plans with time: the rates a workspace's finished jobs record (or a stated default per device), the range
the experiment and self-play plans print, and the estimate set against what a run took.

The finished jobs here are job folders as the worker leaves them (spec.json, status.json, result.json with
the trainer's train_runtime), written directly: running real train and evaluate jobs only to time them
would cost minutes of this CPU for the same files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_experiment import DATASET, build_dataset
from marginlens.core.cli import main
from marginlens.core.run_estimate import (
    DEFAULTS,
    ESTIMATE_FILE,
    estimate_vs_actual,
    measured_rates,
    record_estimate,
)
from marginlens.core.workspace import Workspace

POLICY = "test-org/never-loaded"  # a Hub id: nothing is loaded, the policy table records it
EVAL = "verifier:answer-match,max_new_tokens=100"


def finished_job(ws: Workspace, job_id: str, kind: str, params: dict, started: str, finished: str,
                 status: dict | None = None, result: dict | None = None, state: str = "done") -> Path:
    folder = ws.jobs_dir / job_id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"kind": kind, "params": params, "created": started}))
    (folder / "status.json").write_text(json.dumps({"state": state, "started": started, "finished": finished,
                                                    **(status or {})}))
    (folder / "result.json").write_text(json.dumps(result or {}))
    return folder


def train_job(ws: Workspace, job_id: str, model: str, steps: int, runtime: float, wall_s: int,
              device: str = "cpu") -> None:
    """A finished train job: `steps` optimizer steps of 2 x 4 pairs in `runtime` s of a `wall_s` s job."""
    finished_job(ws, job_id, "train", {"device": device, "model": model, "settings": {"num_processes": 1},
                                       "trl": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}},
                 "2026-12-07T10:00:00Z", f"2026-12-07T10:{wall_s // 60:02d}:{wall_s % 60:02d}Z",
                 {"done": steps, "total": steps},
                 {"global_step": steps, "resumed_from_step": None, "metrics": {"train_runtime": runtime}})


@pytest.fixture
def lab_ws(tmp_path):
    return build_dataset(tmp_path / "workspace", policy=POLICY)


def test_with_no_finished_job_the_rates_are_the_stated_defaults(tmp_path):
    rates = measured_rates(Workspace(tmp_path / "ws"), "cpu")
    assert (rates.train_pairs.low, rates.train_pairs.high) == DEFAULTS["cpu"]["train_pairs"]
    assert all(r.source == "default for cpu" for r in (rates.train_pairs, rates.gen_tokens, rates.start_s))
    # a model ten times the size the defaults were set for trains ten times slower and loads longer
    big = measured_rates(Workspace(tmp_path / "ws"), "cuda", params=1_350_000_000)
    assert big.train_pairs.high == pytest.approx(DEFAULTS["cuda"]["train_pairs"][1] / 10)
    assert big.start_s.high == pytest.approx(DEFAULTS["cuda"]["start_s"][1] * 10)
    assert "scaled to a 1,350M model" in big.train_pairs.source


def test_rates_come_from_finished_jobs_on_the_same_device(tmp_path):
    ws = Workspace(tmp_path / "ws")
    train_job(ws, "t1", "org/m", steps=10, runtime=100.0, wall_s=120)  # 80 pairs in 100 s, 20 s start-up
    train_job(ws, "t2", "org/m", steps=10, runtime=50.0, wall_s=80)  # 1.6 pairs/s, 30 s start-up
    train_job(ws, "t3", "org/other", steps=10, runtime=1.0, wall_s=10)  # another model: not used for org/m
    train_job(ws, "t4", "org/m", steps=10, runtime=1.0, wall_s=10, device="cuda")  # another device
    finished_job(ws, "e1", "evaluate", {"device": "cpu", "generation": {"max_new_tokens": 100},
                                        "eval": {"kind": "verifier"}},
                 "2026-12-07T10:00:00Z", "2026-12-07T10:01:10Z", {"done": 20, "total": 20})  # 10 prompts
    finished_job(ws, "f1", "evaluate", {"device": "cpu", "generation": {"max_new_tokens": 100},
                                        "eval": {"kind": "verifier"}},
                 "2026-12-07T10:00:00Z", "2026-12-07T10:00:01Z", {"done": 3, "total": 20}, state="failed")
    rates = measured_rates(ws, "cpu", "org/m")
    assert (rates.train_pairs.low, rates.train_pairs.high) == pytest.approx((0.8, 1.6))
    assert rates.train_pairs.source == "measured: 2 finished train job(s) of org/m on cpu"
    assert (rates.start_s.low, rates.start_s.high) == (20.0, 30.0)
    # 1,000 tokens of budget in 70 s less the shortest start-up on the device (t3's 9 s); one job: widened
    assert (rates.gen_tokens.low, rates.gen_tokens.high) == pytest.approx((1000 / 61 / 1.5, 1000 / 61 * 1.5))
    assert rates.gen_tokens.source == "measured: 1 finished evaluate job(s) on cpu"
    # no job of this model: the other models' jobs, widened, and said
    other = measured_rates(ws, "cpu", "org/new")
    assert other.train_pairs.source == "measured: 3 finished train job(s) of other models on cpu"
    assert other.train_pairs.low == pytest.approx(0.8 / 1.5)


def test_the_experiment_plan_gives_a_time_range_and_its_rates(lab_ws, capsys):
    train_job(lab_ws, "t1", POLICY, steps=10, runtime=100.0, wall_s=120)
    code = main(["--workspace", str(lab_ws.root), "experiment", DATASET, "--metrics", "map,random", "--seeds", "2",
                 "--eval", EVAL, "--policy", POLICY, "--device", "cpu", "--set", "max_steps=3"])
    captured = capsys.readouterr()
    assert code != 0 and "no terminal to confirm on" in captured.err  # the plan, then not started
    out = captured.out
    (time_line,) = [line.strip() for line in out.splitlines() if line.strip().startswith("time: about")]
    assert "on cpu (training 4 run(s)" in time_line and "evaluating a model x5" in time_line
    (rates,) = [line.strip() for line in out.splitlines() if line.strip().startswith("rates used:")]
    assert f"training 0.53-1.2 pairs/s (measured: 1 finished train job(s) of {POLICY} on cpu)" in rates
    assert "generation 1.5-100 tokens/s of the max_new_tokens budget (default for cpu)" in rates
    # training: 4 runs x (start-up 13-30 s + 3 steps of the 6 pairs each run selects at 0.53-1.2 pairs/s)
    low, high = 4 * (20 / 1.5 + 18 / 1.2), 4 * (20 * 1.5 + 18 / (0.8 / 1.5))
    assert f"training 4 run(s) {round(low / 60)} min to {round(high / 60)} min" in time_line
    assert "learning rate per step (cosine): 0, 1e-06, 5e-07" in out


def test_the_selfplay_plan_gives_a_time_range(lab_ws, capsys):
    code = main(["--workspace", str(lab_ws.root), "selfplay", DATASET, "--annotate", "verifier:self-consistency",
                 "--eval", "verifier:answer-match", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code != 0 and "no terminal to confirm on" in captured.err
    out = captured.out
    (time_line,) = [line.strip() for line in out.splitlines() if line.strip().startswith("time: about")]
    for part in ("sampling x2", "training x2", "evaluating a model x5"):
        assert part in time_line, time_line
    assert any(line.strip().startswith("each round, at most: learning rate") for line in out.splitlines())


def test_the_estimate_is_kept_and_set_against_what_the_run_took(tmp_path):
    ws = Workspace(tmp_path / "ws")
    folder = finished_job(ws, "x1", "experiment", {}, "2026-12-07T10:00:00Z", "2026-12-07T10:05:00Z")
    child = finished_job(ws, "c1", "train", {}, "2026-12-07T10:00:00Z", "2026-12-07T10:04:00Z")
    (child / "results").mkdir()
    (child / "results" / "model.bin").write_bytes(b"\0" * 2_000_000)
    (folder / "results").mkdir()
    (folder / "results" / "state.json").write_text(json.dumps({"cells": {"map/42": {"train_job": "c1"}}}))
    assert estimate_vs_actual(folder) == []  # started before estimates were kept: nothing to compare
    record_estimate(folder, {"seconds": [120.0, 600.0], "disk": [1_000_000, 3_000_000]})
    record_estimate(folder, {"seconds": [1.0, 2.0], "disk": None})  # a resume keeps the first estimate
    assert json.loads((folder / ESTIMATE_FILE).read_text())["seconds"] == [120.0, 600.0]
    time_line, disk_line = estimate_vs_actual(folder)
    assert time_line == "time: estimated 2 min to 10 min, took 5 min (within the estimate)"
    assert disk_line.startswith("disk: estimated 1.0 MB to 3.0 MB at its largest, holds 2.0 MB now")
