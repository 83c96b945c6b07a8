"""Preference training with TRL: the resolved run spec, launching it, trainer construction, results.

Presets and help texts live in core.training.presets, settings resolution and the TRL config in
core.training.settings, the training data checks in core.training.train_data.

DPO runs through `trl.DPOTrainer`; SimPO through `trl.experimental.cpo.CPOTrainer` with
`loss_type="simpo"` and `cpo_alpha=0` (SimPO is CPO's sigmoid loss on length-normalised log-probs
with a target margin and no NLL term).

A run is described by a TrainSpec (core.training.train_spec), built once, when it is submitted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from marginlens.core.atomic import read_json
from marginlens.core.errors import MarginLensError
from marginlens.core.training.settings import launcher_for, make_trl_config, require_peft, resolve_settings
from marginlens.core.training.train_data import data_fingerprint, export_manifest, load_training_data
from marginlens.core.training.train_spec import TrainSpec
from marginlens.core.workspace import Workspace

# Files inside a train job's results folder (core.training.train_job writes them; the page reads them).
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
# The run's result, written once the final model is saved and before the checkpoints are removed: a worker
# killed in between is resumed by returning it, not by training again from a checkpoint that is gone.
FINISHED_FILE = "finished.json"

# The curves the Train page plots, in the names the metrics file uses.
CURVE_KEYS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "learning_rate",
    "tokens_per_s",
)


# ------------------------------------------------------------------------------------------------
# The run spec
# ------------------------------------------------------------------------------------------------
def build_spec(
    data: str | os.PathLike,
    method: str,
    preset: str | None = None,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
) -> TrainSpec:
    """Resolve a training run: preset -> device defaults -> overrides, checked against TRL's config class.

    `model` is any core.scoring.models spec (a local folder, a Hub id, default: SmolLM2-135M-Instruct). Raises
    MarginLensError for an unknown preset or setting, a wrong-typed value, unreadable data, a missing
    peft for LoRA, or a combination TRL rejects -- before anything is launched.
    """
    from marginlens.core.scoring import models

    overrides = dict(overrides or {})
    resolved = resolve_settings(method, preset, overrides, device)
    source = models.resolve_model(model)
    data_path = Path(data).expanduser().resolve()
    load_training_data(data_path)  # fail now, with the row and field, not inside a worker
    manifest = export_manifest(data_path)
    spec = TrainSpec(
        method=method,
        preset=resolved["preset"],
        model=source.spec,
        model_path=source.path,
        model_revision=source.revision,
        model_fingerprint=models.model_fingerprint(source),
        data=str(data_path),
        data_fingerprint=data_fingerprint(data_path),
        # the dataset the export was selected from: where the M_AP loop re-scores by default
        source_dataset=((manifest or {}).get("source") or {}).get("dataset"),
        device=resolved["device"],
        settings=resolved["settings"],
        trl=resolved["trl"],
        overrides=overrides,
    )
    # Built and dropped only to let TRL validate the combination; nothing is written to output_dir.
    make_trl_config(spec, output_dir="marginlens-validation-only")
    return spec


# ------------------------------------------------------------------------------------------------
# Building the trainer (inside the worker)
# ------------------------------------------------------------------------------------------------
def _batch_tokens(inputs: dict[str, Any]) -> int:
    # DPO collates chosen and rejected into one `attention_mask`; CPO keeps them apart (prompt included).
    total = 0
    for key in ("attention_mask", "chosen_attention_mask", "rejected_attention_mask"):
        mask = inputs.get(key)
        if mask is not None and hasattr(mask, "sum"):
            total += int(mask.sum())
    return total


def _token_counting(base: type) -> type:
    """`base` with a running count of the tokens it trained on (this process's share), for tokens/s."""

    class TokenCounting(base):  # type: ignore[misc, valid-type]
        tokens_seen = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.tokens_seen += _batch_tokens(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    TokenCounting.__name__ = TokenCounting.__qualname__ = f"TokenCounting{base.__name__}"
    return TokenCounting


def _lora_config(settings: dict[str, Any]) -> Any:
    require_peft()
    from peft import LoraConfig

    return LoraConfig(
        r=int(settings["lora_r"]),
        lora_alpha=int(settings["lora_alpha"]),
        lora_dropout=float(settings["lora_dropout"]),
        target_modules=settings["lora_target_modules"],
        task_type="CAUSAL_LM",
    )


def build_trainer(spec: TrainSpec, train_dataset: Any, output_dir: str | os.PathLike,
                  callbacks: list[Any] | None = None) -> Any:
    """A ready DPOTrainer / CPOTrainer for the spec, with `tokens_seen` counting trained tokens."""
    import torch
    from marginlens.core.scoring import models
    from transformers import AutoModelForCausalLM

    source = models.ModelSource(spec.model, spec.model_path, spec.model_revision)
    # The config first: under DeepSpeed ZeRO-3 it must exist before from_pretrained to shard the load.
    args = make_trl_config(spec, str(output_dir), n_pairs=len(train_dataset))
    dtype = spec.settings.get("model_dtype", "float32")
    tokenizer = models.load_tokenizer(source)
    model = AutoModelForCausalLM.from_pretrained(
        source.path, revision=source.revision, dtype="auto" if dtype == "auto" else getattr(torch, dtype)
    )
    peft_config = _lora_config(spec.settings) if spec.settings.get("lora") else None
    if spec.method == "dpo":
        from trl import DPOTrainer as base
    else:
        from trl.experimental.cpo import CPOTrainer as base
    return _token_counting(base)(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft_config,
    )


# ------------------------------------------------------------------------------------------------
# Results of a train job (what the page and the M_AP loop read)
# ------------------------------------------------------------------------------------------------
def _results(job: Any) -> Path:
    if job.spec.get("kind") != "train":
        raise MarginLensError(f"job {job.id} is a {job.spec.get('kind')!r} job, not a training run")
    return job.dir / "results"


def read_metrics(source: Any) -> list[dict[str, Any]]:
    """The per-step metrics rows of a train job (or a metrics file), oldest first.

    Safe to poll while the job writes: a half-written last line (a write in progress, or a kill) is skipped.
    """
    path = Path(source) if isinstance(source, (str, os.PathLike)) else _results(source) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def is_complete_checkpoint(path: Path) -> bool:
    # transformers writes trainer_state.json last; a kill mid-save leaves a folder without a valid one.
    try:
        return isinstance(read_json(path / "trainer_state.json"), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoint-N folders under a trainer output folder, by step."""
    folder = Path(folder)
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted((p for p in found if is_complete_checkpoint(p)), key=checkpoint_step)


def checkpoints(job: Any) -> list[Path]:
    return list_checkpoints(_results(job) / CHECKPOINTS_DIR)


def latest_checkpoint(job: Any) -> Path | None:
    found = checkpoints(job)
    return found[-1] if found else None


def final_model_path(job: Any) -> Path:
    """The trained model folder of a finished train job (a full model: from_pretrained loads it)."""
    path = _results(job) / FINAL_DIR
    from marginlens.core.jobs import JobState

    state = job.status().state
    if state is not JobState.DONE or not (path / "config.json").is_file():
        raise MarginLensError(f"training job {job.id} has no final model yet (state: {state})")
    return path


def submit_training(
    ws: Workspace,
    data: str | os.PathLike,
    method: str,
    preset: str | None = None,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
) -> Any:
    """Resolve and launch a run as a background "train" job (same run -> same job; unfinished -> resumes)."""
    from marginlens.core import jobs

    spec = build_spec(data, method, preset=preset, model=model, overrides=overrides, device=device)
    return jobs.submit(ws, "train", spec.to_params(), launcher=launcher_for(spec))


def rescore(ws: Workspace, dataset: str | None, train_job: Any, checkpoint: str | os.PathLike | None = None,
            **score_options: Any) -> Any:
    """The M_AP loop: score `dataset` with the trained model as the new policy (a background job).

    `dataset=None` means the dataset the training export was selected from (its export manifest).

    Uses the final model, or `checkpoint` (e.g. latest_checkpoint(job)) while a run is still going.
    `score_options` are core.scoring.score_spec.ScoreSpec fields (device, mode, reference=the model before
    training for the DPO-form margin, ...). Returns score_submit's ScoringHandle; its fingerprints["policy"]
    names the new logprob table, which sits beside the old one, so margins before and after compare.
    """
    from marginlens.core.scoring.score_spec import ScoreSpec
    from marginlens.core.scoring.score_submit import submit_scoring

    model = Path(checkpoint) if checkpoint is not None else final_model_path(train_job)
    dataset = dataset or train_job.spec["params"].get("source_dataset")
    if not dataset:
        raise MarginLensError(
            f"training job {train_job.id} was not trained on a MarginLens export: name the dataset to re-score"
        )
    if not (model / "config.json").is_file():
        raise MarginLensError(f"{model} is not a saved model (no config.json)")
    return submit_scoring(ws, ScoreSpec(dataset=dataset, policy=str(model), **score_options))
