"""The "train" job kind: one TRL preference-training run in a background worker.

Its params are a TrainSpec (core.training.runs.build_spec). In the job's results folder:

  trl_config.yaml      the same run for TRL's own CLI (`trl dpo --config trl_config.yaml`)
  metrics.jsonl        one JSON line per optimizer step: step, epoch, time, loss, rewards/chosen,
                       rewards/rejected, rewards/margins, rewards/accuracies, learning_rate,
                       tokens_per_s, plus whatever else TRL logs (grad_norm, logps/..., ...)
  checkpoints/checkpoint-N/   the trainer's checkpoints (model, tokenizer, optimizer, RNG, state), while
                       the run trains; removed once the final model is saved, unless the run's settings
                       say keep_checkpoints=true (a checkpoint is ~3x the model: its optimizer state)
  final/               the trained model (full weights; LoRA adapters merged), from_pretrained-ready
  finished.json        the result, written between saving final/ and removing the checkpoints

A stop request (Job.cancel) saves a checkpoint at the current step and ends the job "cancelled"; a
killed worker leaves the last checkpoint. Submitting the same spec again resumes from the newest
complete checkpoint, and the metrics rows after it (steps that will be redone) are dropped first.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from marginlens.core.atomic import format_bytes, read_json, write_json, write_text
from marginlens.core.errors import MarginLensError
from marginlens.core.job_disk import bytes_on_disk, remove
from marginlens.core.jobs import JobCancelled, JobContext
from marginlens.core.training import runs, settings, train_data, train_slot
from marginlens.core.training.train_spec import TrainSpec


def _prepare_resume(ctx: JobContext, results: Path) -> Path | None:
    """The checkpoint to resume from; drops half-written checkpoints and metrics past it."""
    folder = results / runs.CHECKPOINTS_DIR
    complete = runs.list_checkpoints(folder)
    resume = complete[-1] if complete else None
    metrics = results / runs.METRICS_FILE
    if not ctx.is_main:
        return resume
    for path in folder.glob("checkpoint-*"):
        if path not in complete:
            ctx.log(f"removing incomplete {path.name} (the worker stopped while saving it)")
            shutil.rmtree(path, ignore_errors=True)
    if resume is None:
        metrics.unlink(missing_ok=True)  # nothing to continue: the run starts over at step 0
        return None
    step = runs.checkpoint_step(resume)
    kept = [row for row in runs.read_metrics(metrics) if int(row.get("step", 0)) <= step]
    write_text(metrics, "".join(json.dumps(row) + "\n" for row in kept))
    ctx.log(f"resuming from {resume.name} (step {step})")
    return resume


class _JobCallback:
    """Metrics rows, job progress and stop requests, from inside the TRL training loop.

    Built lazily as a TrainerCallback subclass (see `_callback`) so this module imports without
    transformers, which keeps the CLI's start fast.
    """

    def __init__(self, ctx: JobContext, metrics_path: Path):
        self.ctx = ctx
        self.metrics_path = metrics_path
        self.trainer: Any = None
        self._last_time = time.monotonic()
        self._last_tokens = 0
        self._first_step_seen = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.monotonic()
        self._last_tokens = self.trainer.tokens_seen if self.trainer is not None else 0
        since = self.ctx.seconds_since_submitted()  # start-up before any training work (bench/child_startup.py)
        self.ctx.progress(state.global_step, state.max_steps, force=True,
                          **({"train_begin_s": round(since, 2)} if since is not None else {}))
        self.ctx.restart_rate()  # steps/s from the first step, not from the model load

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return  # the end-of-training summary (train_runtime, ...) goes to result.json instead
        now = time.monotonic()
        # Each process counts its own batches; with equal shards, the total is world_size times that.
        tokens = (self.trainer.tokens_seen if self.trainer is not None else 0) * max(1, self.ctx.world_size)
        elapsed = max(now - self._last_time, 1e-9)
        row: dict[str, Any] = {
            "step": state.global_step,
            "epoch": state.epoch,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "tokens_per_s": (tokens - self._last_tokens) / elapsed,
        }
        self._last_time, self._last_tokens = now, tokens
        if state.is_world_process_zero:
            # One appended line per step: a reader sees whole lines, and a kill cuts at most the last.
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        self.ctx.progress(
            state.global_step, state.max_steps,
            loss=row.get("loss"), margin=row.get("rewards/margins"), accuracy=row.get("rewards/accuracies"),
        )

    def on_step_end(self, args, state, control, **kwargs):
        if not self._first_step_seen:
            # the fixed cost of a run, start-up to its first optimizer step (bench/experiment_lab.py reports it)
            self._first_step_seen = True
            since = self.ctx.seconds_since_submitted()
            if since is not None:
                self.ctx.progress(state.global_step, state.max_steps, force=True, first_step_s=round(since, 2))
        if self._stop_requested():
            # Save where we are: resuming then continues from this very step.
            control.should_save = True
            control.should_training_stop = True

    def _stop_requested(self) -> bool:
        stop = self.ctx.cancelled()
        if self.ctx.world_size > 1 and self.trainer is not None:
            # Ranks may see the flag file at different steps; agree, or one rank waits forever in a collective.
            import torch

            accelerator = self.trainer.accelerator
            flag = torch.tensor([int(stop)], device=accelerator.device)
            stop = bool(accelerator.reduce(flag, reduction="sum").item())
        return stop


def _callback(ctx: JobContext, metrics_path: Path) -> Any:
    from transformers import TrainerCallback

    class JobCallback(_JobCallback, TrainerCallback):
        pass

    return JobCallback(ctx, metrics_path)


def _save_final(ctx: JobContext, trainer: Any, results: Path) -> Path:
    """Save the trained model as a full model folder, appearing under its final name all at once.

    Every rank takes part (DeepSpeed/FSDP gather the weights in save_model); only the main one renames.
    core.atomic.write_with would give each rank its own temporary folder, hence the fixed one here.
    """
    final, partial = results / runs.FINAL_DIR, results / ".final-partial"
    if ctx.is_main:
        shutil.rmtree(partial, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        # LoRA: merge the adapters so the result loads (and re-scores) like any causal LM.
        if ctx.is_main:
            trainer.accelerator.unwrap_model(model).merge_and_unload().save_pretrained(partial)
            trainer.processing_class.save_pretrained(partial)
    else:
        trainer.save_model(str(partial))
    trainer.accelerator.wait_for_everyone()
    if ctx.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    return final


def _keep_only_final(ctx: JobContext, spec: TrainSpec, results: Path) -> dict[str, Any]:
    """Once the final model is saved: remove the checkpoints unless the run keeps them; what stays, in bytes."""
    folder = results / runs.CHECKPOINTS_DIR
    removed = 0
    if ctx.is_main and not spec.settings.get("keep_checkpoints") and folder.exists():
        removed = remove([folder])
        ctx.log(f"removed the checkpoints ({format_bytes(removed)}): a finished run keeps its final model "
                "(keep_checkpoints=true keeps them too)")
    return {"final_model_bytes": bytes_on_disk(results / runs.FINAL_DIR), "removed_checkpoint_bytes": removed,
            "kept_checkpoints": [p.name for p in runs.list_checkpoints(folder)]}


def run(ctx: JobContext) -> dict[str, Any]:
    spec = TrainSpec.from_params(ctx.params)
    results = ctx.results_dir
    finished = read_json(results / runs.FINISHED_FILE)
    if isinstance(finished, dict) and (results / runs.FINAL_DIR / "config.json").is_file():
        ctx.log("the run had finished before its worker stopped: its final model is kept, nothing is retrained")
        return {**finished, **_keep_only_final(ctx, spec, results)}
    if train_data.data_fingerprint(spec.data) != spec.data_fingerprint:
        raise MarginLensError(
            f"{spec.data} changed since this run was submitted; submit it again to train on the new content"
        )
    with train_slot.training_slot(ctx):  # queued while another run trains on this machine
        return _train(ctx, spec, results)


def _train(ctx: JobContext, spec: TrainSpec, results: Path) -> dict[str, Any]:
    checkpoints = results / runs.CHECKPOINTS_DIR
    metrics = results / runs.METRICS_FILE
    resume = _prepare_resume(ctx, results)
    ctx.check_cancel()
    ctx.log(f"{spec.method} on {spec.data} with {spec.model} ({spec.device}), preset {spec.preset}")
    dataset = train_data.load_training_data(spec.data)
    if ctx.is_main:  # with the data's size: its warmup is the one this run trains with
        text = settings.trl_config_text(spec, output_dir=str(results / "trl-cli-output"), job_id=ctx.job.id,
                                        n_pairs=len(dataset))
        write_text(results / settings.TRL_CONFIG_FILE, text)
    callback = _callback(ctx, metrics)
    trainer = runs.build_trainer(spec, dataset, checkpoints, callbacks=[callback])
    callback.trainer = trainer
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if ctx.cancelled() and trainer.state.global_step < trainer.state.max_steps:
        ctx.log(f"stopped at step {trainer.state.global_step}; a checkpoint was saved there")
        raise JobCancelled()
    # a stop that arrives after the last step is too late to stop anything: the run is finished
    final = _save_final(ctx, trainer, results)
    ctx.progress(trainer.state.global_step, trainer.state.max_steps, force=True)
    result = {
        "final_model": str(final),
        "global_step": trainer.state.global_step,
        "resumed_from_step": runs.checkpoint_step(resume) if resume else None,
        "train_loss": output.training_loss,
        "metrics": dict(output.metrics),
        "metrics_file": str(metrics),
        "trl_config": str(results / settings.TRL_CONFIG_FILE),
    }
    if ctx.is_main:
        write_json(results / runs.FINISHED_FILE, result)
    return {**result, **_keep_only_final(ctx, spec, results)}
