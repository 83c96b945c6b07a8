"""What the Train page computes, without Streamlit: the form's fields and overrides, train-job rows, curves.

Kept free of `streamlit` so it is tested directly. The page only reads job folders (core.jobs) and the
metrics file each train job appends to (core.training.runs.read_metrics), so polling never blocks on a run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from marginlens.core import jobs
from marginlens.core.errors import MarginLensError
from marginlens.core.training.presets import trl_fields
from marginlens.core.training.runs import CURVE_KEYS, read_metrics
from marginlens.core.training.settings import parse_overrides, parse_value
from marginlens.core.training.train_spec import TrainSpec
from marginlens.core.workspace import Workspace

# The knobs most runs touch, in form order; anything else goes through the "other settings" lines.
# Derived values (gradient_accumulation_steps from the effective batch, simpo_gamma from gamma/beta)
# are left out so that the form never contradicts itself.
FORM_FIELDS: dict[str, tuple[str, ...]] = {
    "dpo": ("learning_rate", "beta", "num_train_epochs", "max_steps", "effective_batch_size",
            "per_device_train_batch_size", "max_length", "lr_scheduler_type", "warmup_steps", "save_steps",
            "seed", "model_dtype", "bf16", "lora", "lora_r", "num_processes", "accelerate_config"),
    "simpo": ("learning_rate", "beta", "gamma_beta_ratio", "num_train_epochs", "max_steps", "effective_batch_size",
              "per_device_train_batch_size", "max_length", "lr_scheduler_type", "warmup_steps", "save_steps",
              "seed", "model_dtype", "bf16", "lora", "lora_r", "num_processes", "accelerate_config"),
}
# Field labels that say more than the TRL name: transformers 5 reads a warmup_steps below 1 as a ratio.
FIELD_LABELS = {"warmup_steps": "warmup_steps (below 1: a share of all steps)"}
CURVE_TITLES = {
    "loss": "loss",
    "rewards/chosen": "rewards/chosen",
    "rewards/rejected": "rewards/rejected",
    "rewards/margins": "rewards/margins",
    "rewards/accuracies": "rewards/accuracies",
    "learning_rate": "learning rate",
    "tokens_per_s": "tokens/s",
}


def form_values(resolved: dict[str, Any], method: str) -> dict[str, Any]:
    """The prefilled value of each form field: resolved settings, resolved TRL values, else TRL's default."""
    fields = trl_fields(method)
    values: dict[str, Any] = {}
    for key in FORM_FIELDS[method]:
        if key in resolved["settings"]:
            values[key] = resolved["settings"][key]
        elif key in resolved["trl"]:
            values[key] = resolved["trl"][key]
        elif key in fields:
            field = fields[key]
            if field.default is not dataclasses.MISSING:
                values[key] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                values[key] = field.default_factory()
    return values


def text_value(value: Any) -> str:
    """How a non-numeric value shows in a text field (the inverse of `parse_value`)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if hasattr(value, "value") and isinstance(value.value, str):  # TRL/transformers enums
        return value.value
    return json.dumps(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return text_value(a) == text_value(b)


def overrides_from_form(prefilled: dict[str, Any], edited: dict[str, Any], extra: str = "") -> dict[str, Any]:
    """What the user changed on top of the preset: edited fields that differ from their prefilled value,
    plus "key=value" lines (any TRL config field). Text fields are parsed like `--set` values."""
    overrides: dict[str, Any] = {}
    for key, value in edited.items():
        if isinstance(value, str) and not isinstance(prefilled.get(key), str):
            value = parse_value(value) if value.strip() else None
        if not _same(value, prefilled.get(key)):
            overrides[key] = value
    lines = [line.strip() for line in extra.splitlines() if line.strip() and not line.strip().startswith("#")]
    overrides.update(parse_overrides(lines))
    return overrides


# Training settings a dashboard client may not set: they name files on the server (DeepSpeed, FSDP and accelerator
# configs), reach the network with the server's credentials (the Hub, experiment trackers), or pass options to
# model loading (remote code, a cache folder, a token). The command line sets them, for someone at the shell.
SERVER_SIDE_SETTINGS = ("deepspeed", "fsdp_config", "accelerator_config", "model_init_kwargs",
                        "ref_model_init_kwargs", "report_to", "push_to_hub", "trust_remote_code")
SERVER_SIDE_PREFIXES = ("hub_", "trackio_", "push_to_hub")
_HARMLESS = {"report_to": ("none", None, [], ["none"]), "push_to_hub": (False, None)}


def dashboard_overrides(overrides: dict[str, Any], server_path: Callable[[str, str], Path]) -> dict[str, Any]:
    """`overrides` as the dashboard accepts them: server-side settings refused, an accelerate config file
    confined by `server_path` (access.server_path: under a data root); a TRL preset name stays as it is."""
    for key, value in overrides.items():
        server_side = key in SERVER_SIDE_SETTINGS or key.startswith(SERVER_SIDE_PREFIXES)
        if server_side and value not in _HARMLESS.get(key, ()):
            raise MarginLensError(f"training setting {key!r} is not taken from the dashboard (it names server files, "
                                  "the network or model loading); set it from the command line: "
                                  f"marginlens train EXPORT --set {key}=...")
    out = dict(overrides)
    config = out.get("accelerate_config")
    # A bare name is a TRL preset only when TRL ships it; anything else is a file (a bare "Makefile" would be
    # read from the server's working folder) and must lie under a data root.
    if isinstance(config, str) and config.strip() and config.strip() not in trl_accelerate_presets():
        out["accelerate_config"] = str(server_path(config, "accelerate_config"))
    return out


def trl_accelerate_presets() -> set[str]:
    """The accelerate configs TRL ships, by the names `accelerate_config=` takes (zero3, fsdp2, ...)."""
    import importlib.util

    spec = importlib.util.find_spec("trl")
    folder = Path(spec.origin).parent / "accelerate_configs" if spec and spec.origin else None
    return {p.stem for p in folder.glob("*.yaml")} if folder and folder.is_dir() else set()


def export_label(export: dict[str, Any]) -> str:
    rows = f"{export['rows']:,} pairs" if isinstance(export.get("rows"), int) else "? pairs"
    source = f" from {export['dataset']}" if export.get("dataset") else ""
    return f"{export['name']} ({export['format']}, {rows}{source})"


def train_jobs(ws: Workspace) -> list[jobs.Job]:
    return jobs.list_jobs(ws, kind="train")


def run_spec(job: jobs.Job) -> TrainSpec:
    """The run a train job was submitted with (its params, typed)."""
    return TrainSpec.from_params(job.spec.get("params", {}))


def job_label(job: jobs.Job) -> str:
    spec = run_spec(job)
    data = Path(spec.data).name if spec.data else "?"
    return f"{job.status().state} · {spec.method} on {data} · {job.id}"


def curve_figures(metrics: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """One small line chart per curve key that the metrics rows carry, as plotly figure dicts (step on x)."""
    figures = []
    for key in CURVE_KEYS:
        points = [(r["step"], r[key]) for r in metrics
                  if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))]
        if not points:
            continue
        figures.append((key, {
            "data": [{"type": "scatter", "mode": "lines+markers", "name": key,
                      "x": [p[0] for p in points], "y": [p[1] for p in points], "marker": {"size": 4}}],
            "layout": {"title": {"text": CURVE_TITLES[key]}, "height": 230, "showlegend": False,
                       "margin": {"l": 10, "r": 10, "t": 36, "b": 10},
                       "xaxis": {"title": {"text": "step"}}},
        }))
    return figures


def metrics_for(job: jobs.Job) -> list[dict[str, Any]]:
    try:
        return read_metrics(job)
    except MarginLensError:
        return []


def derived_lines(resolved: dict[str, Any], method: str) -> list[str]:
    """How the values the form leaves out follow from the ones it shows (for the resolved settings the
    form's current values give), as markdown lines."""
    settings, trl = resolved["settings"], resolved["trl"]
    lines = []
    accumulation = trl.get("gradient_accumulation_steps")
    if settings.get("effective_batch_size") and accumulation is not None:
        per_device, processes = int(trl.get("per_device_train_batch_size", 8)), int(settings.get("num_processes") or 1)
        lines.append(f"`gradient_accumulation_steps` = {accumulation}: effective batch {settings['effective_batch_size']}"
                     f" / ({per_device} per device × {processes} process{'es' if processes > 1 else ''}), rounded up")
    elif accumulation is not None:
        lines.append(f"`gradient_accumulation_steps` = {accumulation}, set directly (the effective batch follows it)")
    if method == "simpo" and trl.get("simpo_gamma") is not None and settings.get("gamma_beta_ratio") is not None:
        lines.append(f"`simpo_gamma` = {trl['simpo_gamma']:g}: gamma_beta_ratio {settings['gamma_beta_ratio']:g}"
                     f" × beta {trl.get('beta', 0.1):g}")
    return lines


def effective_batch(resolved: dict[str, Any]) -> int:
    trl, settings = resolved["trl"], resolved["settings"]
    return (int(trl.get("per_device_train_batch_size", 8)) * int(settings.get("num_processes") or 1)
            * int(trl.get("gradient_accumulation_steps") or 1))


def batch_warning(resolved: dict[str, Any], rows: int | None) -> str | None:
    """A warning when one optimizer step would need more pairs than the export holds."""
    batch = effective_batch(resolved)
    if not isinstance(rows, int) or batch <= rows:
        return None
    return (f"The effective batch ({batch:,} pairs per optimizer step) is larger than the export ({rows:,} pairs): "
            f"each epoch is a single, partial step. Lower effective_batch_size to at most {rows}.")
