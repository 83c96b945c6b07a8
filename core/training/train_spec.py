"""The resolved description of a training run: what a train job's params hold, typed.

A run is described by a TrainSpec, built once, when the run is submitted:

  method, preset        "dpo" | "simpo", and the preset the values started from
  model, model_path     the user's model spec and what from_pretrained loads (core.scoring.models)
  model_revision, model_fingerprint
  data, data_fingerprint  the TRL-format file or save_to_disk folder, and a hash of its content
  device                "cpu" | "cuda" -- the device the defaults were fitted to
  settings              MarginLens-level knobs (SETTINGS_KEYS): effective batch, SimPO gamma/beta,
                        model dtype, LoRA, number of processes, accelerate config
  trl                   the DPOConfig / CPOConfig fields, fully resolved (output_dir excluded)
  overrides             what the user changed on top of the preset (shown in the UI)

The spec is the train job's params (core.training.train_job), so submitting the same run twice gives the same
job, and a changed export or model gives a new one. Values are layered: preset, then the defaults
that fit the device, then the user's overrides; every field of the TRL config class is overridable.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginlens.core.training.settings import make_trl_config, resolve_settings
from marginlens.core.training.train_data import data_fingerprint, export_manifest, load_training_data


@dataclass(frozen=True)
class TrainSpec:
    method: str
    preset: str
    model: str
    model_path: str
    model_revision: str | None
    model_fingerprint: str
    data: str
    data_fingerprint: str
    source_dataset: str | None
    device: str
    settings: dict[str, Any]
    trl: dict[str, Any]
    overrides: dict[str, Any]

    def to_params(self) -> dict[str, Any]:
        """The job params (spec.json): the same keys as the untyped spec had, so job ids are unchanged."""
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainSpec:
        return cls(**{f.name: params.get(f.name) for f in dataclasses.fields(cls)})


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
