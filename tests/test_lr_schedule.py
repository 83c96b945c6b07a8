"""Few-step runs train: the presets' warmup (a ratio of all steps) gives a 1-step run learning rate 0 under
transformers' schedulers, so the train job clamps it, and the plans say what rate each step gets. Checked
against the real scheduler (transformers.get_scheduler) and the real trainer the train job builds."""

from __future__ import annotations

import json

import pytest
import torch
from marginlens.core.training import lr_schedule, settings
from marginlens.core.training.runs import build_spec, build_trainer
from marginlens.core.training.train_data import load_training_data
from tiny_models import tiny_llama  # noqa: F401  (session fixture)
from transformers import get_scheduler

PAIRS = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"Maybe {3 * i + 1}."}
         for i in range(4)]


def real_rates(kind: str, warmup: int, steps: int) -> list[float]:
    """The learning rate each optimizer step sees under transformers' own scheduler (peak 1)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant_with_warmup", "constant"])
@pytest.mark.parametrize("warmup", [0.1, 0.5, 3, 0])
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20])
def test_the_factors_are_the_real_schedulers(kind, warmup, steps):
    trl = {"lr_scheduler_type": kind, "warmup_steps": warmup}
    expected = real_rates(kind, lr_schedule.warmup_steps(trl, steps), steps)
    assert lr_schedule.lr_factors(trl, steps) == pytest.approx(expected)


def test_the_presets_warmup_leaves_a_one_step_run_at_zero_and_the_clamp_fixes_it():
    trl = {"lr_scheduler_type": "cosine", "warmup_steps": 0.1}  # the presets' recipe
    assert real_rates("cosine", lr_schedule.warmup_steps(trl, 1), 1) == [0.0]  # what a 1-step run trained at
    clamped, note = lr_schedule.clamp_warmup(trl, 1)
    assert clamped["warmup_steps"] == 0 and "clamped to 0" in note
    assert real_rates("cosine", lr_schedule.warmup_steps(clamped, 1), 1) == [1.0]
    # a longer run keeps its warmup as configured (its later steps train)
    assert lr_schedule.clamp_warmup(trl, 2) == (trl, None)
    assert lr_schedule.clamp_warmup({**trl, "warmup_steps": 5}, 3) == ({**trl, "warmup_steps": 5}, None)


def test_a_one_step_run_of_the_train_job_steps_at_a_non_zero_rate(tmp_path, tiny_llama, capsys):  # noqa: F811
    data = tmp_path / "export.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS), encoding="utf-8")
    spec = build_spec(data, "simpo", model=str(tiny_llama), device="cpu")  # the preset: 128 pairs per step
    dataset = load_training_data(str(data))
    trainer = build_trainer(spec, dataset, tmp_path / "out")
    steps = lr_schedule.steps_per_run(len(dataset), spec.trl, spec.settings)
    assert steps == 1
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    # the rate the first (and only) optimizer step uses
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(spec.trl["learning_rate"])
    assert "warmup clamped to 0 steps" in capsys.readouterr().out  # said in the job's log
    # without the training set's size nothing is clamped (TRL validation only)
    assert settings.make_trl_config(spec, str(tmp_path / "v")).warmup_steps == 0.1
    # the TRL config file written beside the job runs the same schedule outside MarginLens
    assert "warmup_steps: 0\n" in settings.trl_config_text(spec, str(tmp_path / "o"), n_pairs=len(dataset))


def test_the_plan_says_each_steps_rate_or_the_warmup_and_peak():
    trl = {"lr_scheduler_type": "cosine", "warmup_steps": 0.1, "learning_rate": 1e-6}
    short = lr_schedule.schedule_line(trl, 1)
    assert short == "learning rate per step (cosine): 1e-06"
    assert lr_schedule.schedule_line(trl, 4).startswith("learning rate per step (cosine): 0, 1e-06, ")
    long = lr_schedule.schedule_line(trl, 100)
    assert long == "learning rate: from 0 over 10 warmup step(s), peak 1e-06, then cosine over 90 step(s)"
