"""How much disk training runs take, estimated before anything runs: the lab's and self-play's plans say it
(core.experiments.experiment_plan, core.selfplay.selfplay_spec).

A run keeps its final model: the parameters in the dtype it trained in (model_dtype; float32 by default, so
a model stored in bf16 doubles). While it trains it also holds checkpoints, each the model plus the
optimizer's state (AdamW: two float32 moments per trained parameter), at most save_total_limit of them;
a finished run removes them unless keep_checkpoints=true (core.training.train_job). For SmolLM2-135M:
a 538 MB final model and 1.6 GB per checkpoint.

Worked example (tests/test_disk_use.py): 1,000 float32 parameters stored in bf16 (2,000 bytes of tensors),
model_dtype float32, AdamW, 10 steps with save_steps 4 and save_total_limit 2 -> final 4,000 bytes; a
checkpoint 4,000 + 8,000 = 12,000; saves at steps 4, 8 and the last step, two kept at once: 24,000 more
while it trains.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginlens.core.atomic import format_bytes

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
LORA_TRAINED_SHARE = 0.03  # adapters of rank 16 on every linear layer: ~3% of a small model's parameters
# What one generated answer leaves (the evaluation's cache and results, or a rollout's keyed logs): its text
# at ~4 bytes a token, twice, and a row of fields and the prompt.
ANSWER_TOKEN_BYTES = 8
ANSWER_ROW_BYTES = 1024


def parameters(model_path: str | Path) -> tuple[int, int] | None:
    """(parameters, bytes as stored) of a model folder, from its safetensors headers (no tensor is read);
    None when the folder holds no safetensors file."""
    files = sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []
    count = stored = 0
    for path in files:
        try:
            with open(path, "rb") as fh:
                size = struct.unpack("<Q", fh.read(8))[0]
                if size > path.stat().st_size - 8:
                    return None  # not a safetensors file (its first 8 bytes are the header's length)
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error):
            return None
        try:
            sizes = [(math.prod(t["shape"]), t["dtype"]) for name, t in header.items() if name != "__metadata__"]
        except (AttributeError, KeyError, TypeError):
            return None
        for n, dtype in sizes:
            count, stored = count + n, stored + n * _SAFETENSORS_BYTES.get(dtype, 4)
    return (count, stored) if files else None


def _optimizer_bytes_per_param(optim: str) -> int:
    optim = optim.lower()
    if "sgd" in optim or "adafactor" in optim:
        return 0  # transformers' SGD has no momentum by default; Adafactor keeps factored (tiny) moments
    return 2 if "8bit" in optim else 8


def _saves(steps: int, trl: dict[str, Any]) -> int:
    """Checkpoints alive at once: transformers saves every save_steps steps (a value below 1: a share of the
    run) and at the last step, or once an epoch; save_total_limit removes the older ones."""
    strategy = str(trl.get("save_strategy", "steps"))
    if strategy == "no" or steps < 1:
        return 0
    if strategy == "epoch":
        saves = max(1, math.ceil(float(trl.get("num_train_epochs", 1) or 1)))
    else:
        every = float(trl.get("save_steps", 500) or 500)
        every_steps = max(1, math.ceil(every * steps) if every < 1 else int(every))
        saves = steps // every_steps + (1 if steps % every_steps else 0)
    limit = trl.get("save_total_limit")
    return min(saves, int(limit)) if limit else saves


@dataclass(frozen=True)
class RunDisk:
    """One training run's disk use, in bytes."""

    final: int  # the final model a finished run keeps
    checkpoint: int  # one checkpoint: the model and the optimizer's state
    checkpoints: int  # how many exist at once while it trains
    keep_checkpoints: bool

    @property
    def kept(self) -> int:
        return self.final + (self.checkpoint * self.checkpoints if self.keep_checkpoints else 0)

    @property
    def while_training(self) -> int:
        """More than `kept`, until the run finishes."""
        return 0 if self.keep_checkpoints else self.checkpoint * self.checkpoints


def run_disk(model_path: str | Path, settings: dict[str, Any], trl: dict[str, Any], steps: int) -> RunDisk | None:
    """The estimate for a run of `steps` optimizer steps (settings and trl: as resolve_settings gives them)."""
    found = parameters(model_path)
    if found is None:
        return None
    count, stored = found
    dtype = str(settings.get("model_dtype") or "float32")
    final = stored if dtype not in DTYPE_BYTES else count * DTYPE_BYTES[dtype]
    trained = count * LORA_TRAINED_SHARE if settings.get("lora") else count
    optimizer = trained * _optimizer_bytes_per_param(str(trl.get("optim", "adamw_torch")))
    # a LoRA checkpoint holds the adapters (in float32), not the model
    checkpoint = int((trained * 4 if settings.get("lora") else final) + optimizer)
    return RunDisk(final, checkpoint, _saves(steps, trl), bool(settings.get("keep_checkpoints")))


def answers_bytes(answers: int, tokens: int) -> int:
    """About what `answers` generated answers of `tokens` tokens in all leave on disk."""
    return answers * ANSWER_ROW_BYTES + tokens * ANSWER_TOKEN_BYTES


def disk_line(runs: int, run: RunDisk | None, other: int, other_what: str, model: str) -> str:
    """The plan's line: what the trained models keep, what checkpoints add while one trains (runs train one
    at a time: the training slot), and the rest (`other`, described by `other_what`)."""
    if run is None:
        return (f"disk: not estimated ({model} holds no safetensors file to size the trained models by); plus "
                f"about {format_bytes(other)} of {other_what}")
    rest = f"about {format_bytes(other)} of {other_what}"
    if run.keep_checkpoints:
        return (f"disk: about {format_bytes(runs * run.kept + other)} kept ({runs} trained model(s) of "
                f"{format_bytes(run.final)} each, with {run.checkpoints} checkpoint(s) of "
                f"{format_bytes(run.checkpoint)} each (keep_checkpoints=true), and {rest})")
    return (f"disk: about {format_bytes(runs * run.kept + other)} kept ({runs} trained model(s) of "
            f"{format_bytes(run.final)} each, and {rest}); up to {format_bytes(run.while_training)} more while a "
            "run trains (its checkpoints, removed when it finishes; keep_checkpoints=true keeps them)")


def model_folder(model: str | None) -> Path | None:
    """The local folder of a model spec (core.scoring.models): a folder, or a Hub id's snapshot already in
    the cache (nothing is downloaded); None when neither is here."""
    from marginlens.core.errors import MarginLensError
    from marginlens.core.scoring import models

    try:
        source = models.resolve_model(model)
    except MarginLensError:
        return None
    if Path(source.path).is_dir():
        return Path(source.path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source.path, revision=source.revision, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: the plan says it could not size the model
        return None
