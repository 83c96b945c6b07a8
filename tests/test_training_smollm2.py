"""A 2-step DPO smoke run on the real SmolLM2-135M-Instruct, through `marginlens train` end to end:
the CLI submits a background job, follows it, and the trained model reloads with from_pretrained."""

from __future__ import annotations

import json
import math

import pytest
from marginlens.core import cli, jobs
from marginlens.core.training import runs
from tiny_models import smollm2  # noqa: F401  (session fixture: the converted safetensors folder)


def test_smollm2_dpo_smoke_through_the_cli(ws, tmp_path, smollm2, capsys):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    # MarginLens's own layout: prompt messages, string responses (rendered with SmolLM2's chat template)
    pairs = [
        {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
         "chosen": "The capital of France is Paris.", "rejected": "The capital of France is Berlin."},
        {"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "chosen": "2 + 2 = 4.", "rejected": "2 + 2 = 5."},
    ]
    data = tmp_path / "export.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    # plain SGD: AdamW's two extra copies of 135M weights are most of a CPU step's time, not what is tested
    settings = ["max_steps=2", "per_device_train_batch_size=1", "effective_batch_size=1", "max_length=64",
                "learning_rate=1e-4", "warmup_steps=0", "save_steps=2", "optim=sgd"]
    # no --model: the offline default policy, resolved by core.scoring.models (the fixture's cache)
    argv = ["train", str(data), "--method", "dpo", "--workspace", str(ws.root), "--device", "cpu"]
    for setting in settings:
        argv += ["--set", setting]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "step 2/2" in out and "done: final model in" in out

    (job,) = jobs.list_jobs(ws, kind="train")
    assert job.spec["params"]["model_path"] == str(smollm2)
    rows = runs.read_metrics(job)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in rows)
    assert rows[1]["rewards/margins"] != 0  # step 1 moved the policy away from its reference
    model = AutoModelForCausalLM.from_pretrained(runs.final_model_path(job), dtype=torch.float32)
    assert model.config.vocab_size == 49152
    assert runs.checkpoints(job) == []  # removed once the final model was saved (keep_checkpoints=true keeps them)
