"""How many optimizer steps a run takes and what learning rate each one gets, computed the way
transformers' Trainer does it, without importing it (plans run in the CLI and on page load).

transformers 5 reads `warmup_steps` below 1 as a ratio of all steps, rounded up (TrainingArguments.
get_warmup_steps), and every warmup schedule gives step i the factor i / warmup_steps while i < warmup_steps:
step 0 always trains at 0 when there is any warmup. The presets' warmup of 0.1 therefore leaves a 1-step
run with no step at a non-zero rate -- it trains nothing. `clamp_warmup` removes such warmup (the train job
applies it, the plans say so); tests/test_lr_schedule.py checks these factors against the real scheduler.
"""

from __future__ import annotations

import math
from typing import Any

SHORT_RUN = 8  # runs of at most this many steps list each step's learning rate in the plan
# the schedules whose factors are written out below; any other still gets the warmup rule (all share it)
KNOWN_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")


def steps_per_run(n_pairs: int, trl: dict[str, Any], settings: dict[str, Any]) -> int:
    """Optimizer steps of one run on n pairs, as transformers' Trainer counts them: max_steps when set,
    else epochs x ceil(batches per process / gradient accumulation), at least 1 per epoch."""
    if int(trl.get("max_steps", -1) or -1) > 0:
        return int(trl["max_steps"])
    per_batch = int(trl.get("per_device_train_batch_size", 8)) * max(1, int(settings.get("num_processes") or 1))
    batches = math.ceil(n_pairs / per_batch)
    accumulation = max(1, int(trl.get("gradient_accumulation_steps", 1) or 1))
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(float(trl.get("num_train_epochs", 1.0)) * per_epoch)


def warmup_steps(trl: dict[str, Any], steps: int) -> int:
    """TrainingArguments.get_warmup_steps: an int count, or a ratio (below 1) of all steps rounded up."""
    value = float(trl.get("warmup_steps", 0) or 0)
    return int(value) if value >= 1 else math.ceil(steps * value)


def lr_factors(trl: dict[str, Any], steps: int) -> list[float] | None:
    """Each step's learning rate as a share of the peak (transformers.optimization's lambdas); None for a
    schedule not written out here."""
    kind = str(trl.get("lr_scheduler_type", "linear")).split(".")[-1].lower()
    if kind not in KNOWN_SCHEDULES:
        return None
    warm = warmup_steps(trl, steps) if kind != "constant" else 0
    out = []
    for i in range(steps):
        if i < warm:
            out.append(i / max(1, warm))
        elif kind == "linear":
            out.append(max(0.0, (steps - i) / max(1, steps - warm)))
        elif kind == "cosine":
            progress = (i - warm) / max(1, steps - warm)
            out.append(max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))))
        else:
            out.append(1.0)
    return out


def trains_nothing(trl: dict[str, Any], steps: int) -> bool:
    """Every step's rate is 0. Any warmup zeroes step 0 whatever the schedule, so a 1-step run with warmup
    is the case that matters; the known schedules are checked step by step."""
    factors = lr_factors(trl, steps)
    if factors is None:
        return steps <= 1 and warmup_steps(trl, steps) >= 1
    return steps > 0 and not any(f > 0 for f in factors)


def clamp_warmup(trl: dict[str, Any], steps: int) -> tuple[dict[str, Any], str | None]:
    """`trl` with warmup removed when it leaves no step at a non-zero learning rate, and the note saying so
    (None when nothing changed). Only then: a longer run keeps its warmup exactly as configured."""
    if not trains_nothing(trl, steps) or not warmup_steps(trl, steps):
        return trl, None
    note = (f"warmup_steps={trl.get('warmup_steps')} is {warmup_steps(trl, steps)} warmup step(s) of a "
            f"{steps}-step run, which would train every step at learning rate 0: warmup clamped to 0 steps")
    return {**trl, "warmup_steps": 0}, note


def schedule_line(trl: dict[str, Any], steps: int) -> str:
    """What learning rate each step gets, after the clamp: every step for a short run, else the warmup and
    the peak."""
    trl, _ = clamp_warmup(trl, steps)
    peak = float(trl.get("learning_rate", 5e-5))
    kind = str(trl.get("lr_scheduler_type", "linear")).split(".")[-1]
    factors = lr_factors(trl, steps)
    if factors is not None and steps <= SHORT_RUN:
        rates = ", ".join(f"{peak * f:.3g}" for f in factors)
        return f"learning rate per step ({kind}): {rates}"
    warm = warmup_steps(trl, steps)
    ramp = f"from 0 over {warm} warmup step(s), " if warm else ""
    return f"learning rate: {ramp}peak {peak:.3g}, then {kind} over {steps - warm:,} step(s)"
