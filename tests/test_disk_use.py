"""Disk use shown and bounded: a finished training keeps only its final model unless asked to keep its
checkpoints; a job says what it keeps (status, `marginlens jobs show`); `marginlens jobs clean` removes a
finished job's leftovers (checkpoints, merged part files, unfinished writes) and never its outputs or a
running job's files; the lab's and self-play's plans say how much disk they will take.

Real TRL runs of a tiny Llama on the CPU (as tests/test_training_jobs.py), a real score job, the real CLI."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest
from helpers_data import make_dataset
from helpers_experiment import DATASET, build_dataset
from marginlens.core import cli, jobs
from marginlens.core.atomic import format_bytes, read_json, write_json
from marginlens.core.job_disk import RESERVE_FILE, bytes_on_disk
from marginlens.core.scoring.score_spec import ScoreSpec
from marginlens.core.scoring.score_submit import submit_scoring
from marginlens.core.scoring.score_tables import load_score_table
from marginlens.core.training import runs
from marginlens.core.training.settings import resolve_settings
from marginlens.core.training.train_disk import parameters, run_disk
from tiny_models import conversational_records, single_thread, tiny_llama  # noqa: F401  (session fixture)

single_thread()

PAIRS = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"No idea, maybe {3 * i + 1}."}
         for i in range(4)] * 2
RUN = {"learning_rate": 1e-3, "lr_scheduler_type": "constant", "warmup_steps": 0, "per_device_train_batch_size": 4,
       "effective_batch_size": 4, "max_length": 64, "max_steps": 4, "save_steps": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("disk-use") / "export.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS), encoding="utf-8")
    return path


def train(ws, data, model, **overrides) -> jobs.Job:
    job = runs.submit_training(ws, data, "dpo", model=str(model), device="cpu", overrides={**RUN, **overrides})
    return finished(job)


def finished(job: jobs.Job, timeout: float = 300) -> jobs.Job:
    status = job.wait(poll=0.2, timeout=timeout)
    assert status.state == "done", f"{status}\n{job.log_tail(30)}"
    deadline = time.monotonic() + 60
    while job.is_alive() and time.monotonic() < deadline:  # the worker's interpreter shutting down
        time.sleep(0.05)
    return job


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_finished_training_keeps_only_its_final_model(ws, data, tiny_llama, capsys):  # noqa: F811
    job = train(ws, data, tiny_llama)
    results = job.results_dir
    final = runs.final_model_path(job)
    assert not (results / runs.CHECKPOINTS_DIR).exists() and runs.checkpoints(job) == []
    assert sorted(p.name for p in results.iterdir()) == ["final", "finished.json", "metrics.jsonl", "trl_config.yaml"]
    result = job.result()
    assert result["kept_checkpoints"] == [] and result["final_model_bytes"] == bytes_on_disk(final)
    assert result["removed_checkpoint_bytes"] > 2 * result["final_model_bytes"]  # model + optimizer state, twice
    assert f"removed the checkpoints ({format_bytes(result['removed_checkpoint_bytes'])})" in job.log_path.read_text()
    assert not (job.dir / RESERVE_FILE).exists()

    # the status says what the job keeps; `jobs show` too, with nothing left to clean
    disk = job.status().extra["disk"]
    assert disk["outputs"]["final model"] == {"path": str(final), "bytes": bytes_on_disk(final)}
    assert disk["leftover_bytes"] == 0 and disk["job_bytes"] >= bytes_on_disk(final)
    code, out, _ = run_cli(capsys, "jobs", "show", job.id, "--workspace", str(ws.root))
    assert code == 0
    assert f"final model: {format_bytes(bytes_on_disk(final))} at {final}" in out and "leftovers" not in out

    # killed after the final model was saved and the checkpoints removed, before "done" was recorded: the
    # resumed worker returns the finished run instead of training again from checkpoints that are gone
    rows = runs.read_metrics(job)
    status = read_json(job.dir / "status.json")
    write_json(job.dir / "status.json", {**status, "state": "running", "finished": None})
    assert job.status().state == "interrupted"
    jobs.resume(ws, job)
    assert job.wait(poll=0.2, timeout=120).state == "done", job.log_tail(20)
    assert "nothing is retrained" in job.log_path.read_text()
    assert runs.read_metrics(job) == rows and job.result()["final_model"] == str(final)


def test_kept_checkpoints_stay_until_jobs_clean_removes_them(ws, data, tiny_llama, capsys):  # noqa: F811
    job = train(ws, data, tiny_llama, keep_checkpoints=True)
    found = runs.checkpoints(job)
    assert [p.name for p in found] == ["checkpoint-2", "checkpoint-4"]
    assert job.result()["kept_checkpoints"] == ["checkpoint-2", "checkpoint-4"]
    assert job.result()["removed_checkpoint_bytes"] == 0
    checkpoints = bytes_on_disk(job.results_dir / runs.CHECKPOINTS_DIR)

    # the estimate the plans print, against what the run wrote
    spec = job.spec["params"]
    estimate = run_disk(tiny_llama, spec["settings"], spec["trl"], 4)
    weights = (runs.final_model_path(job) / "model.safetensors").stat().st_size
    assert estimate.final == pytest.approx(weights, rel=0.02)
    assert estimate.checkpoints == 2 and estimate.keep_checkpoints
    assert estimate.checkpoint == pytest.approx(sum(
        (found[-1] / name).stat().st_size for name in ("model.safetensors", "optimizer.pt")), rel=0.05)

    code, out, _ = run_cli(capsys, "jobs", "show", job.id, "--workspace", str(ws.root))
    assert code == 0 and f"leftovers: {format_bytes(checkpoints)} (`marginlens jobs clean {job.id}`" in out

    final = runs.final_model_path(job)
    kept = {p: p.read_bytes() for p in [*final.iterdir(), *(job.results_dir / n for n in (
        "metrics.jsonl", "trl_config.yaml", "finished.json")), job.dir / "result.json", job.dir / "spec.json"]}
    code, out, _ = run_cli(capsys, "jobs", "clean", job.id, "--workspace", str(ws.root))
    assert code == 0 and out.startswith(f"{job.id}: removed results/checkpoints ({format_bytes(checkpoints)})"), out
    assert runs.checkpoints(job) == [] and not (job.results_dir / runs.CHECKPOINTS_DIR).exists()
    assert {p: p.read_bytes() for p in kept} == kept  # the final model and every result, byte for byte
    assert runs.final_model_path(job) == final and job.status().state == "done"
    code, out, _ = run_cli(capsys, "jobs", "clean", job.id, "--workspace", str(ws.root))
    assert code == 0 and out.startswith(f"{job.id}: no leftovers")


def test_clean_all_finished_removes_merged_parts_and_keeps_the_score_table(ws, tmp_path, tiny_llama, capsys):  # noqa: F811
    make_dataset(ws, "d", conversational_records(12, seed=2), tmp_path)
    handle = submit_scoring(ws, ScoreSpec("d", policy=str(tiny_llama), device="cpu", token_budget=200))
    job = finished(handle.job)
    fingerprint = handle.fingerprints["policy"]
    parts = list((job.results_dir / fingerprint).glob("part-*.parquet"))
    assert parts
    table = load_score_table(ws, "d", fingerprint).to_pylist()
    code, out, _ = run_cli(capsys, "jobs", "show", job.id, "--workspace", str(ws.root))
    assert "policy score table: " in out and f"at {ws.scores_dir / 'd' / fingerprint}" in out

    # beside it, a cancelled train job: an unfinished write is a leftover, its checkpoint (resume state) is not
    stopped = jobs.Job(ws.jobs_dir / "train-stopped")
    (stopped.dir / "results" / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (stopped.dir / "results" / "checkpoints" / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (stopped.dir / ".status.json.x1.tmp").mkdir()
    (stopped.dir / ".status.json.x1.tmp" / "status.json").write_text("{half")
    write_json(stopped.dir / "spec.json", {"kind": "train", "params": {}, "job_id": stopped.id})
    write_json(stopped.dir / "status.json", {"state": "cancelled", "message": "cancelled by user"})

    code, out, _ = run_cli(capsys, "jobs", "clean", "--all-finished", "--workspace", str(ws.root))
    assert code == 0, out
    assert all(str(p.relative_to(job.dir)) in out for p in parts)
    assert not list((job.results_dir / fingerprint).glob("part-*.parquet"))
    assert load_score_table(ws, "d", fingerprint).to_pylist() == table
    assert f"{stopped.id}: removed .status.json.x1.tmp" in out and "jobs resume train-stopped` continues" in out
    assert not (stopped.dir / ".status.json.x1.tmp").exists()
    assert (stopped.dir / "results" / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()


def test_clean_never_touches_a_running_job(ws, capsys):
    job = jobs.Job(ws.jobs_dir / "train-running")
    (job.dir / "results" / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    write_json(job.dir / "spec.json", {"kind": "train", "params": {}, "job_id": job.id})
    write_json(job.dir / "status.json", {"state": "running", "message": "running", "pid": 1})
    fd = os.open(job.dir / "worker.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a worker holds the job: say, a resume started a moment ago
    try:
        code, _, err = run_cli(capsys, "jobs", "clean", job.id, "--workspace", str(ws.root))
    finally:
        os.close(fd)
    assert code == 2 and f"job {job.id} is running: its files are in use" in err, err
    assert (job.dir / "results" / "checkpoints" / "checkpoint-1").is_dir()


def test_the_estimates_worked_example(tmp_path):
    """The numbers of core.training.train_disk's docstring."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1000, dtype=torch.bfloat16)}, str(tmp_path / "model.safetensors"))
    assert parameters(tmp_path) == (1000, 2000)
    resolved = resolve_settings("dpo", None, {"max_steps": 10, "save_steps": 4, "save_total_limit": 2}, "cpu")
    assert "keep_checkpoints" not in resolved["settings"]  # stored only when asked for: job ids stay
    run = run_disk(tmp_path, resolved["settings"], resolved["trl"], 10)
    assert (run.final, run.checkpoint, run.checkpoints, run.kept, run.while_training) == (4000, 12000, 2, 4000, 24000)


def test_the_plans_say_how_much_disk(tmp_path, tiny_llama):  # noqa: F811
    from marginlens.core.experiments.experiment_plan import plan_experiment
    from marginlens.core.experiments.experiment_spec import build_spec
    from marginlens.core.selfplay.selfplay_spec import build_selfplay_spec, plan_selfplay

    ws = build_dataset(tmp_path / "workspace", policy=str(tiny_llama))
    final = format_bytes(parameters(tiny_llama)[0] * 4)  # trained and saved in float32
    spec = build_spec(ws, DATASET, metrics=["map", "random"], ratio=0.5, seeds=2, eval="verifier:answer-match",
                      policy=str(tiny_llama), device="cpu", overrides={"max_steps": 3, "save_steps": 1})
    (line,) = [line for line in plan_experiment(ws, spec).lines() if line.startswith("disk:")]
    assert f"kept (4 trained model(s) of {final} each" in line and "more while a run trains" in line, line

    selfplay = build_selfplay_spec(ws, DATASET, annotate="verifier:self-consistency", eval="verifier:answer-match",
                                   policy=str(tiny_llama), iterations=2, metrics=["map"], max_prompts=6,
                                   overrides={"max_steps": 2, "keep_checkpoints": True}, device="cpu")
    (line,) = [line for line in plan_selfplay(ws, selfplay).lines() if line.startswith("disk:")]
    assert f"kept (2 trained model(s) of {final} each, with " in line and "(keep_checkpoints=true)" in line, line
