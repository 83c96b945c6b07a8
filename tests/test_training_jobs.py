"""Real TRL training runs as background jobs on a tiny Llama: the loss falls (DPO and SimPO), the
metrics file holds every step, checkpoints reload with from_pretrained, a kill -9 resumes from the last
checkpoint, and a stop saves a checkpoint that the next submission continues from."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from marginlens.core import jobs
from marginlens.core.atomic import read_json
from marginlens.core.errors import MarginLensError
from marginlens.core.training import runs, settings
from marginlens.core.training.runs import build_spec
from marginlens.core.workspace import Workspace
from tiny_models import tiny_llama  # noqa: F401  (session fixture)

# Four distinct pairs, repeated: a tiny model can learn them in a few steps at a high learning rate.
PAIRS = [
    {"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"No idea, maybe {3 * i + 1} or so."}
    for i in range(4)
] * 2
FAST = {  # what makes a CPU run of a tiny model quick and its loss visibly fall
    "learning_rate": 1e-3,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "per_device_train_batch_size": 4,
    "effective_batch_size": 4,
    "max_length": 64,
}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("train-jobs") / "export.jsonl", PAIRS)


# The same pairs in TRL's conversational form, as the scorer renders them (chat template).
CONVERSATIONAL = [
    {"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": [{"role": "assistant", "content": p["chosen"]}],
     "rejected": [{"role": "assistant", "content": p["rejected"]}]}
    for p in PAIRS[:4]
]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_llama):  # noqa: F811
    """A finished 8-step DPO job on conversational pairs: (workspace, job, data file)."""
    folder = tmp_path_factory.mktemp("dpo-run")
    ws = Workspace(folder / "workspace")
    data = _write(folder / "conversational.jsonl", CONVERSATIONAL * 2)
    # what core.selection.export writes beside an export: the dataset it was selected from (the M_AP loop re-scores it)
    (folder / "conversational.jsonl.manifest.json").write_text(json.dumps({"source": {"dataset": "pairs"}}))
    job = runs.submit_training(ws, data, "dpo", model=str(tiny_llama), device="cpu",
                                   overrides={**FAST, "max_steps": 8, "save_steps": 4, "keep_checkpoints": True})
    _finished(job)
    return ws, job, data


def _finished(job: jobs.Job, timeout: float = 150) -> dict:
    status = job.wait(poll=0.2, timeout=timeout)
    assert status.state == "done", f"{status}\n{job.log_tail(30)}"
    return status


def _first_weight(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.model.layers[0].self_attn.q_proj.weight.detach().clone()


def test_dpo_job_loss_falls_metrics_checkpoints_and_trl_config(dpo_run, tiny_llama):  # noqa: F811
    import torch
    from transformers import AutoTokenizer
    from trl.scripts.dpo import make_parser

    ws, job, data = dpo_run
    status = job.status()
    assert (status.state, status.done, status.total) == ("done", 8, 8)

    rows = runs.read_metrics(job)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for key in runs.CURVE_KEYS:
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 0: ln 2
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert rows[-1]["rewards/margins"] > rows[1]["rewards/margins"] > 0
    assert rows[-1]["rewards/accuracies"] == 1.0
    assert all(r["tokens_per_s"] > 0 for r in rows) and rows[0]["learning_rate"] == 1e-3

    # checkpoints at the interval, reloadable through the real from_pretrained path, and they moved
    found = runs.checkpoints(job)
    assert [p.name for p in found] == ["checkpoint-4", "checkpoint-8"]
    initial, at4 = _first_weight(tiny_llama), _first_weight(found[0])
    final = runs.final_model_path(job)
    assert not torch.equal(initial, at4) and not torch.equal(at4, _first_weight(final))
    assert AutoTokenizer.from_pretrained(found[0]).eos_token == AutoTokenizer.from_pretrained(tiny_llama).eos_token
    result = job.result()
    assert result["global_step"] == 8 and result["resumed_from_step"] is None
    assert result["final_model"] == str(final)

    # the TRL config file is what `trl dpo --config` reads
    trl_config = job.results_dir / settings.TRL_CONFIG_FILE
    _, config, model_args, dataset_args = make_parser().parse_args_and_config(["--config", str(trl_config)])
    assert (config.max_steps, config.learning_rate, config.beta, config.save_steps) == (8, 1e-3, 0.01, 4)
    assert model_args.model_name_or_path == str(tiny_llama)
    assert dataset_args.datasets[0].data_files == str(data)
    assert Path(config.output_dir) != job.results_dir / runs.CHECKPOINTS_DIR

    # the same run submitted again is the same finished job: nothing is retrained
    assert runs.submit_training(ws, data, "dpo", model=str(tiny_llama), device="cpu", overrides={
        **FAST, "max_steps": 8, "save_steps": 4, "keep_checkpoints": True}).id == job.id
    assert len(runs.read_metrics(job)) == 8


def test_rescore_with_the_trained_model_moves_the_implicit_margins(dpo_run, tiny_llama):  # noqa: F811
    """The M_AP loop: the trained model becomes the policy of a new score table beside the old one."""
    from marginlens.core.data.ingest import import_dataset
    from marginlens.core.scoring.score_tables import load_score_table, score_manifest

    ws, job, data = dpo_run
    import_dataset(_write(data.parent / "pairs.jsonl", CONVERSATIONAL), name="pairs", workspace=ws)
    # the model before training as the reference: both tables come from one scoring job
    handle = runs.rescore(ws, None, job, reference=str(tiny_llama), device="cpu")  # None: from the export
    status = handle.job.wait(poll=0.2, timeout=150)
    assert status.state == "done", f"{status}\n{handle.job.log_tail(30)}"
    after_fp, before_fp = handle.fingerprints["policy"], handle.fingerprints["reference"]
    assert score_manifest(ws, "pairs", after_fp)["model"] == str(runs.final_model_path(job))

    def implicit_margins(fingerprint: str) -> list[float]:
        t = load_score_table(ws, "pairs", fingerprint).sort_by("pair_id").to_pylist()
        return [r["chosen_logp"] / r["chosen_ntok"] - r["rejected_logp"] / r["rejected_ntok"] for r in t]

    before, after = implicit_margins(before_fp), implicit_margins(after_fp)
    assert len(after) == 4
    # trained to prefer the chosen responses: every pair's margin grew, and all now favour chosen
    assert all(a > b for a, b in zip(after, before, strict=True)) and all(a > 0 for a in after)


def test_simpo_job_loss_falls(ws, data, tiny_llama):  # noqa: F811
    job = runs.submit_training(ws, data, "simpo", model=str(tiny_llama), device="cpu",
                                   overrides={**FAST, "learning_rate": 3e-4, "max_steps": 6, "save_steps": 100})
    _finished(job)
    rows = runs.read_metrics(job)
    assert [r["step"] for r in rows] == list(range(1, 7))
    # SimPO: no reference model, so the margin starts where the model already is and the loss is not ln 2
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    assert rows[-1]["rewards/accuracies"] == 1.0
    assert all(r["rewards/chosen"] < 0 for r in rows)  # beta * mean log-prob: negative
    assert job.result()["global_step"] == 6
    assert "simpo_gamma: 3.0" in (job.results_dir / settings.TRL_CONFIG_FILE).read_text()


def _wait_for(predicate, timeout: float, what: str, job: jobs.Job):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert job.status().state in ("queued", "running"), f"{what}: {job.status()}\n{job.log_tail(30)}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{job.log_tail(30)}")


def test_kill_resumes_from_checkpoint_and_stop_checkpoints(ws, data, tiny_llama):  # noqa: F811
    steps = 40  # room for the kill and the stop to land mid-run even when this test process is starved
    overrides = {**FAST, "learning_rate": 1e-4, "max_steps": steps, "save_steps": 5, "save_total_limit": 3}
    job = runs.submit_training(ws, data, "dpo", model=str(tiny_llama), device="cpu", overrides=overrides)

    # 1. kill -9 once the first checkpoint is complete
    _wait_for(lambda: runs.checkpoints(job), 120, "a first checkpoint", job)
    os.kill(read_json(job.dir / "status.json")["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while job.status().state != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.status().state == "interrupted"
    killed_at = runs.checkpoint_step(runs.latest_checkpoint(job))
    assert killed_at < steps, "the run finished before the kill: make it longer"
    before = {r["step"]: r for r in runs.read_metrics(job)}

    # 2. resubmitting resumes from that checkpoint; stop it partway
    assert jobs.resume(ws, job).id == job.id
    resumed = f"resuming from checkpoint-{killed_at} (step {killed_at})"
    # the worker logs the resume after dropping the rows the kill left past the checkpoint: newer rows are new
    _wait_for(lambda: resumed in job.log_path.read_text()
              and any(r["step"] > killed_at + 2 for r in runs.read_metrics(job)), 120, "steps after the resume", job)
    job.cancel()
    status = job.wait(poll=0.1, timeout=60)
    assert status.state == "cancelled", status
    rows = runs.read_metrics(job)
    stopped_at = rows[-1]["step"]
    assert killed_at + 2 < stopped_at < steps, "the run finished before the stop: make it longer"
    # the stop saved a checkpoint at the very step it stopped on, not only at the interval
    assert runs.checkpoint_step(runs.latest_checkpoint(job)) == stopped_at
    # rows up to the checkpoint were kept (not re-run); the rows the kill lost were redone once
    assert [r["step"] for r in rows] == list(range(1, stopped_at + 1))
    assert all(rows[s - 1]["time"] == before[s]["time"] for s in range(1, killed_at + 1))

    # 3. and the next submission continues from the stop to the end
    jobs.resume(ws, job)
    _finished(job)
    rows = runs.read_metrics(job)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert job.result()["resumed_from_step"] == stopped_at and job.result()["global_step"] == steps
    assert f"resuming from checkpoint-{stopped_at} (step {stopped_at})" in job.log_path.read_text()


def test_final_model_path_needs_a_finished_training_job(ws, data, tiny_llama):  # noqa: F811
    spec = build_spec(data, "dpo", model=str(tiny_llama), device="cpu", overrides={"max_steps": 1})
    job = jobs.Job(ws.jobs_dir / jobs.job_id_for("train", spec.to_params()))  # never started
    job.dir.mkdir(parents=True)
    (job.dir / "spec.json").write_text(json.dumps({"kind": "train", "params": spec.to_params()}))
    with pytest.raises(MarginLensError, match="has no final model yet"):
        runs.final_model_path(job)
    other = jobs.Job(ws.jobs_dir / "audit-x")
    other.dir.mkdir(parents=True)
    (other.dir / "spec.json").write_text(json.dumps({"kind": "audit", "params": {}}))
    with pytest.raises(MarginLensError, match="not a training run"):
        runs.final_model_path(other)


def test_lora_dpo_trains_adapters_and_writes_a_merged_model(ws, data, tiny_llama):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    job = runs.submit_training(ws, data, "dpo", model=str(tiny_llama), device="cpu",
                                   overrides={**FAST, "lora": True, "lora_r": 4, "lora_alpha": 8,
                                              "learning_rate": 5e-3, "max_steps": 6, "save_steps": 100})
    _finished(job)
    rows = runs.read_metrics(job)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    merged = AutoModelForCausalLM.from_pretrained(runs.final_model_path(job))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    assert not any("lora" in name for name, _ in merged.named_parameters())  # adapters merged into the weights
    changed = [name for (name, p), (_, q) in zip(merged.named_parameters(), base.named_parameters(), strict=True)
               if not torch.equal(p, q)]
    assert changed and all("proj" in name for name in changed)  # only the adapted linear layers moved
