"""Resolving training settings: preset -> device defaults -> overrides, checked against TRL's config
class; the DPOConfig / CPOConfig built from them; how a run is launched; the TRL config file.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

from marginlens.core.errors import MarginLensError
from marginlens.core.training.config_fields import config_field_types, training_arguments_fields
from marginlens.core.training.presets import (
    DEFAULT_PRESET,
    PRESETS,
    SETTINGS_DEFAULTS,
    SETTINGS_KEYS,
    check_method,
    config_class,
    preset_values,
)
from marginlens.core.training.train_data import RESPONSE_COLUMNS
from marginlens.core.training.train_spec import TrainSpec

# The TRL config file a train job writes beside its results (core.training.train_job).
TRL_CONFIG_FILE = "trl_config.yaml"
# TRL fields MarginLens owns: the job decides where checkpoints go and when to resume.
MANAGED_TRL_FIELDS = ("output_dir", "resume_from_checkpoint", "overwrite_output_dir")
_DTYPES = ("float32", "bfloat16", "float16", "auto")
_RENAMED = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


# ------------------------------------------------------------------------------------------------
# Value checking and --set parsing
# ------------------------------------------------------------------------------------------------
def _type_options(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(opt for arg in typing.get_args(annotation) for opt in _type_options(arg))
    return (annotation,)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check a value against a config field's annotation; widen ints to floats where floats are wanted.

    TrainingArguments checks few types itself, and a string learning rate would only fail deep inside
    the optimizer, hours after submission on a busy cluster: catch it here, in one line.
    """
    options = _type_options(annotation)
    plain = {typing.get_origin(o) or o for o in options}
    if any(o is Any or isinstance(o, (str, typing.TypeVar)) for o in plain):
        return value  # unresolvable annotation: let the config class judge
    if value is None:
        if type(None) in plain:
            return None
    elif isinstance(value, bool):
        if bool in plain:
            return value
    elif isinstance(value, int) and int in plain:
        return value
    elif isinstance(value, (int, float)) and float in plain:
        return float(value)
    elif isinstance(value, float) and int in plain and value.is_integer():
        return int(value)
    elif isinstance(value, str) and (str in plain or any(isinstance(o, type) and issubclass(o, enum.Enum) for o in plain)):
        return value
    elif isinstance(value, list) and list in plain:
        return value
    elif isinstance(value, str) and list in plain:
        return [value]  # e.g. DPO's loss_type: one name stands for a one-element list
    elif isinstance(value, dict) and dict in plain:
        return value
    wanted = " or ".join(sorted({getattr(o, "__name__", str(o)).replace("NoneType", "null") for o in plain}))
    raise MarginLensError(f"training setting {key!r} expects {wanted}, got {value!r}")


_SETTINGS_TYPES: dict[str, Any] = {
    "effective_batch_size": int | None,
    "gamma_beta_ratio": float | None,
    "model_dtype": str,
    "lora": bool,
    "lora_r": int,
    "lora_alpha": int,
    "lora_dropout": float,
    "lora_target_modules": str | list,
    "num_processes": int,
    "accelerate_config": str | None,
    "keep_checkpoints": bool,
}


def _check_setting(key: str, value: Any) -> Any:
    value = _coerce(key, value, _SETTINGS_TYPES[key])
    if key == "model_dtype" and value not in _DTYPES:
        raise MarginLensError(f"training setting 'model_dtype' must be one of {', '.join(_DTYPES)}, got {value!r}")
    if key in ("effective_batch_size", "num_processes") and value is not None and value < 1:
        raise MarginLensError(f"training setting {key!r} must be at least 1, got {value}")
    return value


def parse_value(text: str) -> Any:
    """A `--set key=value` value: JSON (numbers, true/false/null, lists, objects), else the plain string."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false", "null", "none"):
        return {"true": True, "false": False}.get(lowered)
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        return stripped


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """["learning_rate=5e-7", "lora=true"] -> {"learning_rate": 5e-07, "lora": True}."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MarginLensError(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = parse_value(value)
    return overrides


# ------------------------------------------------------------------------------------------------
# Device-fitting defaults and resolution
# ------------------------------------------------------------------------------------------------
def device_defaults(device: str) -> dict[str, Any]:
    """What fits the device, under the user's overrides.

    CPU: no bf16 and no gradient checkpointing -- TRL turns both on by default, and on CPUs without
    bf16 units a step gets ~10x slower (measured: a SmolLM2 step ~87 s instead of ~9 s). CUDA: bf16 mixed precision where the GPU
    has it (fp16 otherwise), and gradient checkpointing, which large models need to fit.
    """
    checkpointing = _renamed("gradient_checkpointing")
    if device == "cpu":
        return {"bf16": False, "fp16": False, checkpointing: False, "dataloader_pin_memory": False}
    import torch

    bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return {"bf16": bf16, "fp16": not bf16, checkpointing: True}


# Device files a CUDA (or ROCm) GPU needs: with none of them torch sees no GPU, so "auto" is the CPU without
# importing torch (seconds of a page's first load). With one present, torch decides as before.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd")


def _device_kind(device: str | None) -> str:
    """"cpu" or "cuda" for a device option (auto, cpu, cuda, cuda:N), as models.resolve_device decides it."""
    wanted = (device or "auto").lower()
    if wanted == "cpu" or (wanted == "auto" and "torch" not in sys.modules
                           and not any(Path(p).exists() for p in GPU_DEVICE_FILES)):
        return "cpu"
    from marginlens.core.scoring import models

    return "cpu" if models.resolve_device(device) == "cpu" else "cuda"


def _renamed(key: str) -> str:
    """The current name of a TrainingArguments field that transformers 5 renamed.

    transformers 5.x reads `gradient_checkpointing*` only when `activation_checkpointing*` is unset,
    so a value under the old name next to one under the new name would be silently ignored.
    """
    new = _RENAMED.get(key)
    if new and new in training_arguments_fields():
        return new
    return key


def _split(values: dict[str, Any], method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate MarginLens settings from TRL fields, checking every key and value."""
    fields = config_field_types(method)
    settings: dict[str, Any] = {}
    trl: dict[str, Any] = {}
    for key, value in values.items():
        key = _renamed(key) if key in _RENAMED else key
        if key in SETTINGS_KEYS:
            settings[key] = _check_setting(key, value)
        elif key in MANAGED_TRL_FIELDS:
            raise MarginLensError(
                f"training setting {key!r} is managed by MarginLens (checkpoints live in the job's results "
                "folder; resubmitting an unfinished run resumes it)"
            )
        elif key in fields:
            trl[key] = _coerce(key, value, fields[key])
        else:
            close = difflib.get_close_matches(key, [*fields, *SETTINGS_KEYS], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise MarginLensError(f"unknown training setting {key!r} for {method}{hint}")
    return settings, trl


def resolve_settings(
    method: str,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """The layered values without data or model: {"preset", "device", "settings", "trl"}.

    Cheap (no data read, no model hashed): what a form shows before launch. build_spec adds the rest.
    """
    check_method(method)
    preset = preset or DEFAULT_PRESET[method]
    if PRESETS.get(preset, {}).get("method", method) != method:
        raise MarginLensError(f"preset {preset!r} is for {PRESETS[preset]['method']}, not {method}")
    device = _device_kind(device)
    base_settings, base_trl = _split(preset_values(preset), method)
    fit_settings, fit_trl = _split(device_defaults(device), method)
    user_settings, user_trl = _split(dict(overrides or {}), method)
    settings = {**SETTINGS_DEFAULTS, **base_settings, **fit_settings, **user_settings}
    trl = {**base_trl, **fit_trl, **user_trl}

    if method == "simpo":
        if trl.get("loss_type", "simpo") != "simpo":
            raise MarginLensError(
                f"method simpo trains with loss_type 'simpo', not {trl['loss_type']!r} (use method dpo for other losses)"
            )
        trl["loss_type"] = "simpo"
        trl.setdefault("cpo_alpha", 0.0)
        # CPOTrainer collates its own columns and drops unused ones itself (with a warning): say it up front.
        trl.setdefault("remove_unused_columns", False)
        if "simpo_gamma" not in user_trl:
            ratio = settings.get("gamma_beta_ratio")
            if ratio is not None:
                trl["simpo_gamma"] = float(ratio) * float(trl.get("beta", 0.1))
    else:
        settings["gamma_beta_ratio"] = None  # a SimPO knob; kept out so it cannot split DPO job ids
    if "gradient_accumulation_steps" in user_trl:
        settings["effective_batch_size"] = None  # the user chose accumulation directly
    elif settings["effective_batch_size"]:
        per_step = int(trl.get("per_device_train_batch_size", 8)) * int(settings["num_processes"])
        trl["gradient_accumulation_steps"] = max(1, math.ceil(settings["effective_batch_size"] / per_step))
    if settings["lora"]:
        require_peft()
    if not settings.get("keep_checkpoints"):
        # stored only when asked for: runs submitted before the setting existed keep their job ids
        settings.pop("keep_checkpoints", None)
    return {"preset": preset, "device": device, "settings": settings, "trl": trl}


def make_trl_config(spec: TrainSpec, output_dir: str, n_pairs: int | None = None) -> Any:
    """The DPOConfig / CPOConfig for a spec; TRL's own validation errors become one-line errors. With the
    training set's size (`n_pairs`), a warmup that would leave every step at learning rate 0 is clamped
    (core.training.lr_schedule), said on stdout: the job's log."""
    from marginlens.core.training.lr_schedule import clamp_warmup, steps_per_run

    cls = config_class(spec.method)
    trl = dict(spec.trl)
    if n_pairs is not None:
        trl, note = clamp_warmup(trl, steps_per_run(n_pairs, trl, spec.settings))
        if note:
            print(f"note: {note}", flush=True)
    try:
        return cls(output_dir=output_dir, **trl)
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MarginLensError(f"invalid {spec.method} training settings: {first}") from None


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise MarginLensError(
            "LoRA training needs the 'peft' package, which is not installed: pip install peft "
            "(or train all weights: lora=false)"
        ) from None


def launcher_for(spec: TrainSpec) -> list[str] | None:
    """The job launcher: plain python for one process, `accelerate launch` for several or a config.

    TRL's preset names (zero3, fsdp2, ...) resolve to the files TRL ships, as `trl dpo` does.
    """
    settings = spec.settings
    processes, config = int(settings.get("num_processes") or 1), settings.get("accelerate_config")
    if processes <= 1 and not config:
        return None
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if config:
        from trl.cli.accelerate_config import resolve_accelerate_config_argument

        try:
            launcher += resolve_accelerate_config_argument(["--accelerate_config", str(config)])
        except ValueError as exc:
            raise MarginLensError(f"accelerate config: {exc}") from None
    if processes > 1:
        launcher += ["--num_processes", str(processes)]
    return launcher


# ------------------------------------------------------------------------------------------------
# The TRL config file (run the same training with TRL's own CLI)
# ------------------------------------------------------------------------------------------------
def _dataset_entry(data: Path) -> dict[str, Any]:
    """A TRL DatasetConfig mapping (load_dataset arguments) for the data file or save_to_disk folder."""
    if data.is_dir():
        # save_to_disk writes Arrow stream files: the "arrow" builder reads them (a DatasetDict: its train split).
        split_dir = data / "train" if (data / "dataset_dict.json").is_file() else data
        entry: dict[str, Any] = {"path": "arrow", "data_files": sorted(str(p) for p in split_dir.glob("*.arrow"))}
    else:
        entry = {"path": "parquet" if data.suffix.lower() == ".parquet" else "json", "data_files": str(data)}
    import datasets

    try:
        names = datasets.load_dataset(entry["path"], data_files=entry["data_files"], split="train").column_names
    except Exception:  # already checked by load_training_data; keep every preference column then
        names = list(RESPONSE_COLUMNS)
    # Only the preference columns: extra ones (metrics, scores) would reach TRL's collator.
    return {**entry, "split": "train", "columns": [c for c in RESPONSE_COLUMNS if c in names]}


def trl_config_document(spec: TrainSpec, output_dir: str, n_pairs: int | None = None) -> dict[str, Any]:
    """The YAML mapping TRL's `TrlParser` reads: ModelConfig + config-class fields + a dataset mixture; with
    the training set's size, the warmup clamped as make_trl_config clamps it (the same run, outside too)."""
    settings = spec.settings
    doc: dict[str, Any] = {"model_name_or_path": spec.model_path}
    if spec.model_revision:
        doc["model_revision"] = spec.model_revision
    if settings.get("model_dtype"):
        doc["dtype"] = settings["model_dtype"]
    if settings.get("lora"):
        doc.update(
            use_peft=True,
            lora_r=settings["lora_r"],
            lora_alpha=settings["lora_alpha"],
            lora_dropout=settings["lora_dropout"],
            lora_target_modules=settings["lora_target_modules"],
        )
    doc["datasets"] = [_dataset_entry(Path(spec.data))]
    trl = dict(spec.trl)
    if n_pairs is not None:
        from marginlens.core.training.lr_schedule import clamp_warmup, steps_per_run

        trl, _ = clamp_warmup(trl, steps_per_run(n_pairs, trl, spec.settings))
    doc.update(trl)
    doc["output_dir"] = output_dir
    if int(settings.get("num_processes") or 1) > 1:
        doc["num_processes"] = int(settings["num_processes"])  # passed through to accelerate launch
    if settings.get("accelerate_config"):
        doc["accelerate_config"] = settings["accelerate_config"]
    return doc


def trl_config_text(spec: TrainSpec, output_dir: str, job_id: str = "", n_pairs: int | None = None) -> str:
    import yaml

    if spec.method == "dpo":
        how = f"#   trl dpo --config {TRL_CONFIG_FILE}\n"
    else:
        how = (
            "#   TRL's CLI has no SimPO/CPO command (CPOTrainer lives in trl.experimental.cpo). This file parses\n"
            "#   with TrlParser((ScriptArguments, CPOConfig, ModelConfig, DatasetMixtureConfig)); pass the\n"
            "#   parsed config to trl.experimental.cpo.CPOTrainer in your own script.\n"
        )
    header = (
        f"# TRL config written by MarginLens{' for job ' + job_id if job_id else ''}: {spec.method} "
        f"(preset {spec.preset}) on {spec.data}\n"
        "# Start the same run outside MarginLens with:\n" + how +
        "# Its output_dir is a folder of its own, so it never overwrites this job's checkpoints.\n"
    )
    return header + yaml.safe_dump(trl_config_document(spec, output_dir, n_pairs), sort_keys=False)
