"""Preference training with TRL: presets, the resolved run spec, trainer construction, results.

DPO runs through `trl.DPOTrainer`; SimPO through `trl.experimental.cpo.CPOTrainer` with
`loss_type="simpo"` and `cpo_alpha=0` (SimPO is CPO's sigmoid loss on length-normalised log-probs
with a target margin and no NLL term).

A run is described by a *spec*, a JSON-able dict built once, when the run is submitted:

  method, preset        "dpo" | "simpo", and the preset the values started from
  model, model_path     the user's model spec and what from_pretrained loads (core.models)
  model_revision, model_fingerprint
  data, data_fingerprint  the TRL-format file or save_to_disk folder, and a hash of its content
  device                "cpu" | "cuda" -- the device the defaults were fitted to
  settings              MarginLens-level knobs (SETTINGS_KEYS): effective batch, SimPO gamma/beta,
                        model dtype, LoRA, number of processes, accelerate config
  trl                   the DPOConfig / CPOConfig fields, fully resolved (output_dir excluded)
  overrides             what the user changed on top of the preset (shown in the UI)

The spec is the train job's params (core.train_job), so submitting the same run twice gives the same
job, and a changed export or model gives a new one. Values are layered: preset, then the defaults
that fit the device, then the user's overrides; every field of the TRL config class is overridable.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import json
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from core.atomic import read_json
from core.errors import MarginLensError, RowError
from core.workspace import Workspace

METHODS = ("dpo", "simpo")
RESPONSE_COLUMNS = ("prompt", "chosen", "rejected")

# Files inside a train job's results folder (core.train_job writes them; the page reads them).
METRICS_FILE = "metrics.jsonl"
TRL_CONFIG_FILE = "trl_config.yaml"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"

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
}
# TRL fields MarginLens owns: the job decides where checkpoints go and when to resume.
MANAGED_TRL_FIELDS = ("output_dir", "resume_from_checkpoint", "overwrite_output_dir")
_SETTINGS_DEFAULTS: dict[str, Any] = {
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
_DTYPES = ("float32", "bfloat16", "float16", "auto")
_RENAMED = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}

# The paper's recipe (DESIGN.md section 1): 1 epoch, cosine, warmup 0.1, max length 2048, batch 128.
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


# ------------------------------------------------------------------------------------------------
# Config classes and value checking
# ------------------------------------------------------------------------------------------------
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


def _trl_fields(method: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_class(method)) if f.init}


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
}


def _check_setting(key: str, value: Any) -> Any:
    value = _coerce(key, value, _SETTINGS_TYPES[key])
    if key == "model_dtype" and value not in _DTYPES:
        raise MarginLensError(f"training setting 'model_dtype' must be one of {', '.join(_DTYPES)}, got {value!r}")
    if key in ("effective_batch_size", "num_processes") and value is not None and value < 1:
        raise MarginLensError(f"training setting {key!r} must be at least 1, got {value}")
    return value


def describe_setting(method: str, key: str) -> str:
    """One line of help for a setting, for tooltips and `--help`-style listings."""
    if key in SETTINGS_KEYS:
        return SETTINGS_KEYS[key]
    field = _trl_fields(method).get(key)
    if field is None:
        raise MarginLensError(f"unknown training setting {key!r} for {method}")
    return " ".join(str(field.metadata.get("help", "")).split())


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
# Presets and device-fitting defaults
# ------------------------------------------------------------------------------------------------
def list_presets(method: str | None = None) -> dict[str, dict[str, Any]]:
    """Preset name -> {"method", "description", "values"}; optionally only one method's."""
    return {k: v for k, v in PRESETS.items() if method is None or v["method"] == method}


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise MarginLensError(f"unknown training preset {name!r} (known: {', '.join(PRESETS)})")
    return dict(PRESETS[name]["values"])


def device_defaults(device: str) -> dict[str, Any]:
    """What fits the device, under the user's overrides.

    CPU: no bf16 and no gradient checkpointing -- TRL turns both on by default, and on CPUs without
    bf16 units a step gets ~10x slower (DESIGN.md section 4). CUDA: bf16 mixed precision where the GPU
    has it (fp16 otherwise), and gradient checkpointing, which large models need to fit.
    """
    checkpointing = _renamed("gradient_checkpointing")
    if device == "cpu":
        return {"bf16": False, "fp16": False, checkpointing: False, "dataloader_pin_memory": False}
    import torch

    bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return {"bf16": bf16, "fp16": not bf16, checkpointing: True}


def _renamed(key: str) -> str:
    """The current name of a TrainingArguments field that transformers 5 renamed.

    transformers 5.x reads `gradient_checkpointing*` only when `activation_checkpointing*` is unset,
    so a value under the old name next to one under the new name would be silently ignored.
    """
    from transformers import TrainingArguments

    new = _RENAMED.get(key)
    if new and new in {f.name for f in dataclasses.fields(TrainingArguments)}:
        return new
    return key


# ------------------------------------------------------------------------------------------------
# Training data
# ------------------------------------------------------------------------------------------------
def data_fingerprint(path: str | os.PathLike) -> str:
    """Content hash of a data file or save_to_disk folder: a rewritten export makes a new run."""
    path = Path(path)
    hasher = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        hasher.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                hasher.update(block)
    return "sha256:" + hasher.hexdigest()[:24]


def _read_dataset(path: Path) -> Any:
    import datasets

    if path.is_dir():
        if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            raise MarginLensError(f"{path}: a folder, but not a datasets save_to_disk folder")
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise MarginLensError(f"{path}: the saved DatasetDict has no 'train' split (splits: {list(loaded)})")
            loaded = loaded["train"]
        return loaded
    builders = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    builder = builders.get(path.suffix.lower())
    if builder is None:
        raise MarginLensError(f"{path}: training data must be .jsonl, .json, .parquet or a save_to_disk folder")
    return datasets.load_dataset(builder, data_files=str(path), split="train")


def _first_bad_row(column: Any, is_text: bool) -> int | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    empty = pc.is_null(column)
    size = pc.utf8_length(column) if is_text else pc.list_value_length(column)
    empty = pc.or_(empty, pc.equal(pc.fill_null(size, 0), 0))
    index = pc.index(empty, True).as_py()
    return None if index < 0 else index


def _column_kind(path: Path, table: Any, name: str) -> str:
    import pyarrow as pa

    arrow_type = table.schema.field(name).type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "text"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return "messages"
    raise MarginLensError(
        f"{path}: field '{name}' is {arrow_type}; expected a string or a list of {{role, content}} messages"
    )


def _check_filled(path: Path, dataset: Any, names: tuple[str, ...], reason: str) -> dict[str, str]:
    table = dataset.data.table
    kinds = {}
    for name in names:
        kinds[name] = _column_kind(path, table, name)
        bad = _first_bad_row(table.column(name), kinds[name] == "text")
        if bad is not None:
            raise RowError(str(path), bad, name, "empty", reason)
    return kinds


def load_training_data(path: str | os.PathLike) -> Any:
    """The prompt/chosen/rejected columns of a TRL-format file or folder, checked, as a datasets.Dataset.

    Accepts what TRL's preference trainers accept: standard (strings) or conversational (message lists),
    with an explicit prompt column or an implicit one (whole transcripts in chosen/rejected, e.g. an
    hh-rlhf export; the shared prefix becomes the prompt through TRL's own extract_prompt). A prompt
    given as messages with plain-string responses is turned into the conversational form, since TRL
    cannot concatenate a message list with a string. Other columns are dropped.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MarginLensError(f"training data {path} not found")
    try:
        dataset = _read_dataset(path)
    except MarginLensError:
        raise
    except Exception as exc:  # arrow/json errors: unreadable or mixed-type columns
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MarginLensError(f"{path}: cannot read as preference data: {first}") from None
    missing = [c for c in ("chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise MarginLensError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}: TRL preference data needs "
            f"chosen and rejected, and a prompt column or transcripts that share it (has: "
            f"{', '.join(dataset.column_names)})"
        )
    if len(dataset) == 0:
        raise MarginLensError(f"{path}: no rows to train on")
    explicit = "prompt" in dataset.column_names
    dataset = dataset.select_columns([c for c in RESPONSE_COLUMNS if c in dataset.column_names])
    kinds = _check_filled(path, dataset, ("chosen", "rejected"), "missing or empty; every pair needs both responses")
    if kinds["chosen"] != kinds["rejected"]:
        raise MarginLensError(f"{path}: 'chosen' is {kinds['chosen']} but 'rejected' is {kinds['rejected']}")
    if not explicit:
        from trl.data_utils import extract_prompt

        dataset = dataset.map(extract_prompt, desc="extracting the shared prompt")
        reason = "chosen and rejected share no prompt (an implicit prompt is their common beginning)"
    else:
        reason = "missing or empty; every pair needs a prompt"
    kinds.update(_check_filled(path, dataset, ("prompt",), reason))
    if kinds["prompt"] == "text" and kinds["chosen"] == "messages":
        raise MarginLensError(
            f"{path}: 'prompt' is text but the responses are message lists; use all strings or all message lists"
        )
    if kinds["prompt"] == "messages" and kinds["chosen"] == "text":
        dataset = dataset.map(
            lambda row: {
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            },
            desc="wrapping responses as assistant messages",
        )
    return dataset.select_columns(list(RESPONSE_COLUMNS))


# ------------------------------------------------------------------------------------------------
# The run spec
# ------------------------------------------------------------------------------------------------
def _split(values: dict[str, Any], method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate MarginLens settings from TRL fields, checking every key and value."""
    fields = _trl_fields(method)
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
            trl[key] = _coerce(key, value, fields[key].type)
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
    from core import models

    check_method(method)
    preset = preset or DEFAULT_PRESET[method]
    if PRESETS.get(preset, {}).get("method", method) != method:
        raise MarginLensError(f"preset {preset!r} is for {PRESETS[preset]['method']}, not {method}")
    device = "cpu" if models.resolve_device(device) == "cpu" else "cuda"
    base_settings, base_trl = _split(preset_values(preset), method)
    fit_settings, fit_trl = _split(device_defaults(device), method)
    user_settings, user_trl = _split(dict(overrides or {}), method)
    settings = {**_SETTINGS_DEFAULTS, **base_settings, **fit_settings, **user_settings}
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
    return {"preset": preset, "device": device, "settings": settings, "trl": trl}


def build_spec(
    data: str | os.PathLike,
    method: str,
    preset: str | None = None,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Resolve a training run: preset -> device defaults -> overrides, checked against TRL's config class.

    `model` is any core.models spec (a local folder, a Hub id, default: SmolLM2-135M-Instruct). Raises
    MarginLensError for an unknown preset or setting, a wrong-typed value, unreadable data, a missing
    peft for LoRA, or a combination TRL rejects -- before anything is launched.
    """
    from core import models

    overrides = dict(overrides or {})
    resolved = resolve_settings(method, preset, overrides, device)
    source = models.resolve_model(model)
    data_path = Path(data).expanduser().resolve()
    load_training_data(data_path)  # fail now, with the row and field, not inside a worker
    manifest = export_manifest(data_path)
    spec = {
        "method": method,
        "preset": resolved["preset"],
        "model": source.spec,
        "model_path": source.path,
        "model_revision": source.revision,
        "model_fingerprint": models.model_fingerprint(source),
        "data": str(data_path),
        "data_fingerprint": data_fingerprint(data_path),
        # the dataset the export was selected from: where the M_AP loop re-scores by default
        "source_dataset": ((manifest or {}).get("source") or {}).get("dataset"),
        "device": resolved["device"],
        "settings": resolved["settings"],
        "trl": resolved["trl"],
        "overrides": overrides,
    }
    # Built and dropped only to let TRL validate the combination; nothing is written to output_dir.
    make_trl_config(spec, output_dir="marginlens-validation-only")
    return spec


def export_manifest(data: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance manifest core.export writes beside (or inside) an export; None for other files."""
    from core.export import manifest_path_for

    path = Path(data)
    try:
        return read_json(manifest_path_for(path, "hf" if path.is_dir() else "jsonl"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def make_trl_config(spec: dict[str, Any], output_dir: str) -> Any:
    """The DPOConfig / CPOConfig for a spec; TRL's own validation errors become one-line errors."""
    cls = config_class(spec["method"])
    try:
        return cls(output_dir=output_dir, **spec["trl"])
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MarginLensError(f"invalid {spec['method']} training settings: {first}") from None


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise MarginLensError(
            "LoRA training needs the 'peft' package, which is not installed: pip install peft "
            "(or train all weights: lora=false)"
        ) from None


def launcher_for(spec: dict[str, Any]) -> list[str] | None:
    """The job launcher: plain python for one process, `accelerate launch` for several or a config.

    TRL's preset names (zero3, fsdp2, ...) resolve to the files TRL ships, as `trl dpo` does.
    """
    settings = spec["settings"]
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


def build_trainer(spec: dict[str, Any], train_dataset: Any, output_dir: str | os.PathLike,
                  callbacks: list[Any] | None = None) -> Any:
    """A ready DPOTrainer / CPOTrainer for the spec, with `tokens_seen` counting trained tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from core import models

    source = models.ModelSource(spec["model"], spec["model_path"], spec.get("model_revision"))
    # The config first: under DeepSpeed ZeRO-3 it must exist before from_pretrained to shard the load.
    args = make_trl_config(spec, str(output_dir))
    dtype = spec["settings"].get("model_dtype", "float32")
    tokenizer = models.load_tokenizer(source)
    model = AutoModelForCausalLM.from_pretrained(
        source.path, revision=source.revision, dtype="auto" if dtype == "auto" else getattr(torch, dtype)
    )
    peft_config = _lora_config(spec["settings"]) if spec["settings"].get("lora") else None
    if spec["method"] == "dpo":
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


def trl_config_document(spec: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """The YAML mapping TRL's `TrlParser` reads: ModelConfig + config-class fields + a dataset mixture."""
    settings = spec["settings"]
    doc: dict[str, Any] = {"model_name_or_path": spec["model_path"]}
    if spec.get("model_revision"):
        doc["model_revision"] = spec["model_revision"]
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
    doc["datasets"] = [_dataset_entry(Path(spec["data"]))]
    doc.update(spec["trl"])
    doc["output_dir"] = output_dir
    if int(settings.get("num_processes") or 1) > 1:
        doc["num_processes"] = int(settings["num_processes"])  # passed through to accelerate launch
    if settings.get("accelerate_config"):
        doc["accelerate_config"] = settings["accelerate_config"]
    return doc


def trl_config_text(spec: dict[str, Any], output_dir: str, job_id: str = "") -> str:
    import yaml

    if spec["method"] == "dpo":
        how = f"#   trl dpo --config {TRL_CONFIG_FILE}\n"
    else:
        how = (
            "#   TRL's CLI has no SimPO/CPO command (CPOTrainer lives in trl.experimental.cpo). This file parses\n"
            "#   with TrlParser((ScriptArguments, CPOConfig, ModelConfig, DatasetMixtureConfig)); pass the\n"
            "#   parsed config to trl.experimental.cpo.CPOTrainer in your own script.\n"
        )
    header = (
        f"# TRL config written by MarginLens{' for job ' + job_id if job_id else ''}: {spec['method']} "
        f"(preset {spec['preset']}) on {spec['data']}\n"
        "# Start the same run outside MarginLens with:\n" + how +
        "# Its output_dir is a folder of its own, so it never overwrites this job's checkpoints.\n"
    )
    return header + yaml.safe_dump(trl_config_document(spec, output_dir), sort_keys=False)


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
    state = job.status().get("state")
    if state != "done" or not (path / "config.json").is_file():
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
    from core import jobs

    spec = build_spec(data, method, preset=preset, model=model, overrides=overrides, device=device)
    return jobs.submit(ws, "train", spec, launcher=launcher_for(spec))


def resume_training(ws: Workspace, job: Any) -> Any:
    """Restart a stopped, failed or killed run from its last checkpoint (a running or done one is left be)."""
    from core import jobs

    spec = job.spec["params"]
    _results(job)
    return jobs.submit(ws, "train", spec, launcher=launcher_for(spec))


def rescore(ws: Workspace, dataset: str | None, train_job: Any, checkpoint: str | os.PathLike | None = None,
            **score_options: Any) -> Any:
    """The M_AP loop: score `dataset` with the trained model as the new policy (a background job).

    `dataset=None` means the dataset the training export was selected from (its export manifest).

    Uses the final model, or `checkpoint` (e.g. latest_checkpoint(job)) while a run is still going.
    `score_options` are core.score_job.ScoreSpec fields (device, mode, reference=the model before
    training for the DPO-form margin, ...). Returns score_job's ScoringHandle; its fingerprints["policy"]
    names the new logprob table, which sits beside the old one, so margins before and after compare.
    """
    from core.score_job import ScoreSpec, submit_scoring

    model = Path(checkpoint) if checkpoint is not None else final_model_path(train_job)
    dataset = dataset or train_job.spec["params"].get("source_dataset")
    if not dataset:
        raise MarginLensError(
            f"training job {train_job.id} was not trained on a MarginLens export: name the dataset to re-score"
        )
    if not (model / "config.json").is_file():
        raise MarginLensError(f"{model} is not a saved model (no config.json)")
    return submit_scoring(ws, ScoreSpec(dataset=dataset, policy=str(model), **score_options))
