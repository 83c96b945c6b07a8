"""Training presets and the settings vocabulary: methods, the paper's recipes, help texts.

What a form or `--help` listing shows before anything is resolved. The TRL config classes are imported
lazily (config_class), so this module imports without trl.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from marginlens.core.errors import MarginLensError

METHODS = ("dpo", "simpo")

TRAINING_EXPLANATION = """\
**What the reward curves mean.** The trainer's "rewards" are *implicit* rewards: how much more
likely the model makes a response than before training (DPO: `beta * (log pi(y|x) - log pi_ref(y|x))`,
summed over the response), or how likely it finds the response per token (SimPO:
`beta * mean log pi(y|x)`, no reference model).

- **rewards/margins** = rewards/chosen - rewards/rejected, averaged over the batch. This is what the
  loss pushes up: it should rise. For SimPO the loss only reaches low values once the margin clears
  the target `gamma`.
- **rewards/accuracies** = the share of pairs whose chosen response gets the higher reward. 0.5 is
  chance; it should climb towards 1 on the training data.
- **rewards/chosen falling is normal.** Preference losses only care about the *gap*; in practice both
  responses usually lose probability and the rejected one loses more. A falling rewards/chosen with a
  rising margin is healthy. Worry when the margin stalls or accuracy sits near 0.5, or when
  rewards/chosen collapses fast (learning rate too high: the model is unlearning fluent text).
- **DPO starts at margin 0 and loss ln 2 = 0.693** (the policy equals its reference at step 0);
  SimPO's rewards are absolute, so its rewards are negative from the start and its margin starts at
  whatever the model already believed -- which is what MarginLens's implicit margin measures.
"""

# MarginLens-level settings (everything else is a field of the TRL config class).
SETTINGS_KEYS = {
    "effective_batch_size": "pairs per optimizer step over all processes; sets gradient_accumulation_steps",
    "gamma_beta_ratio": "SimPO target margin gamma divided by beta (sets simpo_gamma = ratio * beta)",
    "model_dtype": "dtype the weights are loaded in: float32 (default; bf16/fp16 run as mixed precision), "
    "bfloat16, float16 or auto",
    "lora": "train LoRA adapters instead of all weights (needs the peft package)",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA scaling alpha",
    "lora_dropout": "LoRA dropout",
    "lora_target_modules": "modules LoRA adapts ('all-linear' or a list of module names)",
    "num_processes": "processes (GPUs) to train on; more than 1 runs under accelerate launch",
    "accelerate_config": "an accelerate config file, or a TRL preset name (zero2, zero3, fsdp2, multi_gpu, ...)",
    "keep_checkpoints": "keep the trainer's checkpoints (model plus optimizer state, about 3x the model each) "
    "after a run finishes; by default only the final model stays",
}
SETTINGS_DEFAULTS: dict[str, Any] = {
    "effective_batch_size": 128,
    "gamma_beta_ratio": None,
    "model_dtype": "float32",
    "lora": False,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": "all-linear",
    "num_processes": 1,
    "accelerate_config": None,
}

# The paper's recipe (SimPO's, which the paper trains with): 1 epoch, cosine, warmup 0.1, max length 2048, batch 128.
_RECIPE: dict[str, Any] = {
    "num_train_epochs": 1,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,  # transformers 5: a value below 1 is a ratio of the total steps
    "max_length": 2048,
    "effective_batch_size": 128,
    "per_device_train_batch_size": 2,
    # Per-step metrics are what the live curves plot; logging a step costs nothing next to the step.
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 2,
    "report_to": "none",
    "seed": 42,
    # tqdm's carriage-return bars garble the job log; the metrics file and job progress replace them.
    "disable_tqdm": True,
}
PRESETS: dict[str, dict[str, Any]] = {
    "simpo-llama3-8b-instruct": {
        "method": "simpo",
        "description": "SimPO as in the paper for Llama-3-8B-Instruct: beta 10, gamma/beta 0.3, lr 1e-6",
        "values": {**_RECIPE, "beta": 10.0, "gamma_beta_ratio": 0.3, "learning_rate": 1e-6},
    },
    "simpo-gemma2-9b-it": {
        "method": "simpo",
        "description": "SimPO as in the paper for Gemma-2-9b-it: beta 10, gamma/beta 0.5, lr 8e-7",
        "values": {**_RECIPE, "beta": 10.0, "gamma_beta_ratio": 0.5, "learning_rate": 8e-7},
    },
    "dpo-paper": {
        "method": "dpo",
        "description": "DPO with the paper's beta 0.01 and the shared recipe (lr 1e-6, 1 epoch, cosine, warmup 0.1)",
        "values": {**_RECIPE, "beta": 0.01, "learning_rate": 1e-6},
    },
}
DEFAULT_PRESET = {"simpo": "simpo-llama3-8b-instruct", "dpo": "dpo-paper"}


def config_class(method: str) -> type:
    """The TRL config dataclass for a method (imports trl: call it in workers and handlers)."""
    check_method(method)
    if method == "dpo":
        from trl import DPOConfig

        return DPOConfig
    # SimPO lives in TRL's experimental CPO trainer; its import warning would repeat in every job log.
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOConfig

    return CPOConfig


def check_method(method: str) -> str:
    if method not in METHODS:
        raise MarginLensError(f"unknown training method {method!r} (expected one of: {', '.join(METHODS)})")
    return method


def trl_fields(method: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_class(method)) if f.init}


def describe_setting(method: str, key: str) -> str:
    """One line of help for a setting, for tooltips and `--help`-style listings."""
    if key in SETTINGS_KEYS:
        return SETTINGS_KEYS[key]
    field = trl_fields(method).get(key)
    if field is None:
        raise MarginLensError(f"unknown training setting {key!r} for {method}")
    return " ".join(str(field.metadata.get("help", "")).split())


def list_presets(method: str | None = None) -> dict[str, dict[str, Any]]:
    """Preset name -> {"method", "description", "values"}; optionally only one method's."""
    return {k: v for k, v in PRESETS.items() if method is None or v["method"] == method}


def preset_method(name: str) -> str:
    """The method a preset is for (dpo or simpo): the CLI's default --method when a preset is named."""
    if name not in PRESETS:
        raise MarginLensError(f"unknown training preset {name!r} (known: {', '.join(PRESETS)})")
    return str(PRESETS[name]["method"])


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise MarginLensError(f"unknown training preset {name!r} (known: {', '.join(PRESETS)})")
    return dict(PRESETS[name]["values"])
