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

core.training.runs.build_spec resolves one. The spec is the train job's params (core.training.train_job), so submitting the same run twice gives the same
job, and a changed export or model gives a new one. Values are layered: preset, then the defaults
that fit the device, then the user's overrides; every field of the TRL config class is overridable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


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

