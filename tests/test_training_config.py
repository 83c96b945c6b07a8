"""Training settings: presets, device-fitting defaults, overrides, data checks, the TRL config file.

No training here (see test_training_jobs.py); the tiny Llama is only loaded for fingerprints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from marginlens.core import jobs
from marginlens.core.errors import MarginLensError, RowError
from marginlens.core.training import presets, settings, train_data
from marginlens.core.training.runs import build_spec
from marginlens.core.training.train_spec import TrainSpec
from tiny_models import tiny_llama  # noqa: F401  (session fixture)

# The keys a train job's params held before the spec was typed (spec.json of existing workspaces).
UNTYPED_SPEC_KEYS = ("method", "preset", "model", "model_path", "model_revision", "model_fingerprint", "data",
                     "data_fingerprint", "source_dataset", "device", "settings", "trl", "overrides")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


PAIRS = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"Maybe {3 * i + 1}."}
         for i in range(4)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("train-data") / "export.jsonl", PAIRS)


def test_simpo_presets_follow_the_paper_and_fit_the_cpu(data, tiny_llama):  # noqa: F811
    spec = build_spec(data, "simpo", model=str(tiny_llama), device="cpu")
    trl = spec.trl
    assert spec.preset == "simpo-llama3-8b-instruct"
    assert (trl["loss_type"], trl["cpo_alpha"], trl["beta"]) == ("simpo", 0.0, 10.0)
    assert trl["simpo_gamma"] == pytest.approx(3.0)  # gamma/beta 0.3 with beta 10
    assert trl["learning_rate"] == 1e-6
    assert (trl["num_train_epochs"], trl["lr_scheduler_type"], trl["warmup_steps"]) == (1, "cosine", 0.1)
    # effective batch 128 = 2 per device x 64 accumulation steps on one process
    assert (trl["per_device_train_batch_size"], trl["gradient_accumulation_steps"]) == (2, 64)
    # TRL's own defaults would be bf16=True and gradient checkpointing on: ~10x slower steps on CPU
    config = settings.make_trl_config(spec, output_dir="unused")
    assert type(config).__name__ == "CPOConfig"
    assert config.bf16 is False and config.gradient_checkpointing is False
    assert config.simpo_gamma == pytest.approx(3.0) and config.loss_type == "simpo"

    gemma = build_spec(data, "simpo", preset="simpo-gemma2-9b-it", model=str(tiny_llama), device="cpu")
    assert gemma.trl["simpo_gamma"] == pytest.approx(5.0) and gemma.trl["learning_rate"] == 8e-7


def test_dpo_preset_and_overrides(data, tiny_llama):  # noqa: F811
    overrides = settings.parse_overrides(
        ["learning_rate=5e-7", "beta=1", "max_steps=10", "effective_batch_size=8", "per_device_train_batch_size=4",
         "lr_scheduler_type=linear", "bf16=false"]
    )
    assert overrides["learning_rate"] == 5e-7 and overrides["bf16"] is False
    spec = build_spec(data, "dpo", model=str(tiny_llama), overrides=overrides, device="cpu")
    trl = spec.trl
    assert spec.preset == "dpo-paper" and "loss_type" not in trl
    assert trl["beta"] == 1.0 and isinstance(trl["beta"], float)  # widened: DPOConfig.beta is a float
    assert (trl["learning_rate"], trl["max_steps"], trl["lr_scheduler_type"]) == (5e-7, 10, "linear")
    assert trl["gradient_accumulation_steps"] == 2  # 8 pairs per step / 4 per device
    assert spec.overrides == overrides
    config = settings.make_trl_config(spec, output_dir="unused")
    assert type(config).__name__ == "DPOConfig" and config.beta == 1.0
    # accumulation set directly wins over the effective batch
    direct = build_spec(data, "dpo", model=str(tiny_llama), device="cpu",
                                 overrides={"gradient_accumulation_steps": 3})
    assert direct.trl["gradient_accumulation_steps"] == 3 and direct.settings["effective_batch_size"] is None
    # the pre-transformers-5 name still works (transformers 5 renamed it to activation_checkpointing)
    legacy = build_spec(data, "dpo", model=str(tiny_llama), device="cpu",
                                 overrides={"gradient_checkpointing": True})
    assert settings.make_trl_config(legacy, output_dir="unused").gradient_checkpointing is True
    # the same settings are the same spec (and so the same job); different data is a different one
    again = build_spec(data, "dpo", model=str(tiny_llama), overrides=overrides, device="cpu")
    assert again == spec
    assert jobs.job_id_for("train", again.to_params()) == jobs.job_id_for("train", spec.to_params())
    # the typed spec travels as the same JSON params the untyped spec did: old train jobs keep their ids
    params = json.loads(json.dumps(spec.to_params()))
    assert sorted(params) == sorted(UNTYPED_SPEC_KEYS)
    assert TrainSpec.from_params(params) == spec


@pytest.mark.parametrize(
    ("method", "overrides", "message"),
    [
        ("dpo", {"learning_rat": 1e-6}, "did you mean learning_rate"),
        ("dpo", {"learning_rate": "fast"}, "'learning_rate' expects float"),
        ("dpo", {"max_steps": 2.5}, "'max_steps' expects int"),
        ("dpo", {"output_dir": "/tmp/x"}, "managed by MarginLens"),
        ("simpo", {"loss_type": "sigmoid"}, "loss_type 'simpo'"),
        ("dpo", {"lr_scheduler_type": "zigzag"}, "invalid dpo training settings"),
        ("dpo", {"model_dtype": "int8"}, "model_dtype"),
        ("dpo", {"effective_batch_size": 0}, "at least 1"),
    ],
)
def test_bad_settings_fail_before_launch(data, tiny_llama, method, overrides, message):  # noqa: F811
    with pytest.raises(MarginLensError, match=message):
        build_spec(data, method, model=str(tiny_llama), overrides=overrides, device="cpu")


def test_preset_and_method_must_match(data, tiny_llama):  # noqa: F811
    with pytest.raises(MarginLensError, match="is for simpo, not dpo"):
        build_spec(data, "dpo", preset="simpo-gemma2-9b-it", model=str(tiny_llama), device="cpu")
    with pytest.raises(MarginLensError, match="unknown training preset"):
        build_spec(data, "dpo", preset="nope", model=str(tiny_llama), device="cpu")
    with pytest.raises(MarginLensError, match="unknown training method"):
        build_spec(data, "ppo", model=str(tiny_llama), device="cpu")


def test_lora_is_an_option_that_needs_peft(data, tiny_llama):  # noqa: F811
    try:
        import peft  # noqa: F401
    except ImportError:
        with pytest.raises(MarginLensError, match="needs the 'peft' package"):
            build_spec(data, "dpo", model=str(tiny_llama), overrides={"lora": True}, device="cpu")
    else:
        spec = build_spec(data, "dpo", model=str(tiny_llama), overrides={"lora": True, "lora_r": 4},
                                   device="cpu")
        assert spec.settings["lora"] is True and spec.settings["lora_r"] == 4


def test_training_data_is_checked_with_row_and_field(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [PAIRS[0], {**PAIRS[1], "chosen": ""}])
    with pytest.raises(RowError, match=r"empty.jsonl: row 1, field 'chosen'"):
        train_data.load_training_data(empty)
    no_rejected = write_jsonl(tmp_path / "cols.jsonl", [{"prompt": "p", "chosen": "c"}])
    with pytest.raises(MarginLensError, match="missing column\\(s\\) 'rejected'"):
        train_data.load_training_data(no_rejected)
    with pytest.raises(MarginLensError, match="must be .jsonl"):
        train_data.load_training_data(write_jsonl(tmp_path / "x.txt", PAIRS))
    with pytest.raises(MarginLensError, match="not found"):
        train_data.load_training_data(tmp_path / "missing.jsonl")


def test_training_data_forms(tmp_path):
    # MarginLens's own layout (prompt messages, string responses) becomes TRL's conversational form
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": [{"role": "user", "content": "Hi?"}], "chosen": "Hello.",
                                                   "rejected": "Go away.", "m_ap": 1.5}])
    row = train_data.load_training_data(mixed)[0]
    assert row == {"prompt": [{"role": "user", "content": "Hi?"}],
                   "chosen": [{"role": "assistant", "content": "Hello."}],
                   "rejected": [{"role": "assistant", "content": "Go away."}]}
    # hh-rlhf transcripts without a prompt column: the shared beginning is the prompt (TRL's extract_prompt)
    hh = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.",
                                             "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}])
    row = train_data.load_training_data(hh)[0]
    assert row["prompt"] == "\n\nHuman: Hi?\n\nAssistant:" and row["chosen"] == " Hello."
    disjoint = write_jsonl(tmp_path / "disjoint.jsonl", [{"chosen": "Yes.", "rejected": "No."}])
    with pytest.raises(RowError, match="row 0, field 'prompt'.*share no prompt"):
        train_data.load_training_data(disjoint)


def test_trl_config_file_parses_with_trls_own_parsers(data, tiny_llama, tmp_path):  # noqa: F811
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser, get_dataset
    from trl.experimental.cpo import CPOConfig
    from trl.scripts.dpo import make_parser

    dpo = build_spec(data, "dpo", model=str(tiny_llama), device="cpu", overrides={"max_steps": 7})
    path = tmp_path / "dpo.yaml"
    path.write_text(settings.trl_config_text(dpo, output_dir=str(tmp_path / "out")))
    # exactly what `trl dpo --config dpo.yaml` parses
    script_args, config, model_args, dataset_args = make_parser().parse_args_and_config(["--config", str(path)])
    assert type(config).__name__ == "DPOConfig"
    assert (config.beta, config.max_steps, config.learning_rate) == (0.01, 7, 1e-6)
    assert config.bf16 is False and config.gradient_checkpointing is False
    assert config.output_dir == str(tmp_path / "out")
    assert model_args.model_name_or_path == str(tiny_llama) and model_args.dtype == "float32"
    loaded = get_dataset(dataset_args)["train"]
    assert loaded.column_names == ["prompt", "chosen", "rejected"] and loaded[0] == PAIRS[0]

    simpo = build_spec(data, "simpo", model=str(tiny_llama), device="cpu")
    path = tmp_path / "simpo.yaml"
    path.write_text(settings.trl_config_text(simpo, output_dir=str(tmp_path / "out")))
    parser = TrlParser((ScriptArguments, CPOConfig, ModelConfig, DatasetMixtureConfig))
    _, config, _, _ = parser.parse_args_and_config(["--config", str(path)])
    assert isinstance(config, CPOConfig)
    assert (config.loss_type, config.cpo_alpha, config.beta) == ("simpo", 0.0, 10.0)
    assert config.simpo_gamma == pytest.approx(3.0)


def test_launcher_uses_accelerate_for_several_processes(data, tiny_llama):  # noqa: F811
    single = build_spec(data, "dpo", model=str(tiny_llama), device="cpu")
    assert settings.launcher_for(single) is None
    multi = build_spec(data, "dpo", model=str(tiny_llama), device="cpu",
                                overrides={"num_processes": 4, "accelerate_config": "zero3"})
    launcher = settings.launcher_for(multi)
    assert launcher[1:3] == ["-m", "accelerate.commands.launch"]
    assert launcher[launcher.index("--num_processes") + 1] == "4"
    assert Path(launcher[launcher.index("--config_file") + 1]).name == "zero3.yaml"  # TRL's shipped config
    # 128 pairs per step over 4 processes x 2 per device
    assert multi.trl["gradient_accumulation_steps"] == 16


def test_resolve_settings_is_the_cheap_form_view():
    values = settings.resolve_settings("simpo", preset="simpo-gemma2-9b-it", overrides={"beta": 2.0}, device="cpu")
    assert values["preset"] == "simpo-gemma2-9b-it" and values["device"] == "cpu"
    assert values["trl"]["simpo_gamma"] == pytest.approx(1.0)  # gamma/beta 0.5 follows an overridden beta
    assert values["settings"]["gamma_beta_ratio"] == 0.5
    assert "learning rate" in presets.describe_setting("dpo", "learning_rate").lower()
    assert presets.describe_setting("simpo", "gamma_beta_ratio").startswith("SimPO target margin")


def test_export_manifest_names_the_dataset_to_rescore(tmp_path, tiny_llama):  # noqa: F811
    data = write_jsonl(tmp_path / "sel.jsonl", PAIRS)
    assert build_spec(data, "dpo", model=str(tiny_llama), device="cpu").source_dataset is None
    (tmp_path / "sel.jsonl.manifest.json").write_text(json.dumps({"source": {"dataset": "uf"}}))
    assert build_spec(data, "dpo", model=str(tiny_llama), device="cpu").source_dataset == "uf"


def test_cli_dry_run_and_errors(data, tiny_llama, tmp_path, capsys):  # noqa: F811
    from marginlens.core import cli

    base = ["train", str(data), "--workspace", str(tmp_path / "ws"), "--model", str(tiny_llama), "--device", "cpu"]
    assert cli.main([*base, "--method", "dpo", "--dry-run", "--set", "beta=0.2", "--set", "max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert '"beta": 0.2' in out and "trl dpo --config trl_config.yaml" in out and "max_steps: 3" in out
    assert not (tmp_path / "ws" / "jobs").exists() or not any((tmp_path / "ws" / "jobs").iterdir())
    assert cli.main([*base, "--method", "dpo", "--set", "betta=0.2"]) == 2
    assert "error: unknown training setting 'betta' for dpo (did you mean beta" in capsys.readouterr().err
    assert cli.main(["train", "--workspace", str(tmp_path / "ws")]) == 2  # --method defaults to dpo; EXPORT does not
    assert "train needs an EXPORT path" in capsys.readouterr().err
    assert cli.main(["train", "--list-presets"]) == 0
    assert "simpo-gemma2-9b-it  (simpo)" in capsys.readouterr().out


def test_cli_finds_an_export_by_its_name_in_the_workspace(data, tiny_llama, tmp_path, capsys, monkeypatch):  # noqa: F811
    """`marginlens select --out NAME` writes under WORKSPACE/exports: `train NAME` must find it there."""
    import shutil

    from marginlens.core import cli
    from marginlens.core.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    shutil.copy(data, ws.exports_dir / "picked.jsonl")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "picked.jsonl", "--workspace", str(ws.root), "--model", str(tiny_llama), "--device", "cpu",
            "--method", "dpo", "--dry-run"]
    assert cli.main(argv) == 0
    assert str(ws.exports_dir / "picked.jsonl") in capsys.readouterr().out
