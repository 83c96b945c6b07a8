"""The models' dtype: `auto` resolved per device and CPU, part of every model table's fingerprint, shown with
the table; a bf16 run's log-probs are float32 sums that agree with float32's."""

from __future__ import annotations

import pytest
import torch
from marginlens.app import score_form
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.logprobs import ImplicitScorer
from marginlens.core.scoring.models import CPU_BF16_ENV, cpu_has_native_bf16, dtype_for, load_causal_lm
from marginlens.core.scoring.score_spec import ScoreSpec, plan_tasks
from tiny_models import pairs_of_mixed_lengths, single_thread, tiny_llama, tiny_reward  # noqa: F401

single_thread()

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
NEOVERSE_V1 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\n"


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    assert cpu_has_native_bf16(SAPPHIRE_RAPIDS) and cpu_has_native_bf16(NEOVERSE_V1)
    assert not cpu_has_native_bf16(ZEN3)
    assert not cpu_has_native_bf16("flags : avx512f avx512bw avx512vl\n")  # bf16 emulated on AVX512: not native
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert cpu_has_native_bf16(ZEN3)
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert not cpu_has_native_bf16(SAPPHIRE_RAPIDS)


@pytest.mark.parametrize(("native", "expected"), [("1", "bfloat16"), ("0", "float32")])
def test_auto_follows_the_cpu(monkeypatch, native, expected):
    monkeypatch.setenv(CPU_BF16_ENV, native)
    assert dtype_for("cpu") == dtype_for("cpu", "auto") == expected
    assert dtype_for("cuda:0", "auto") == "bfloat16"
    assert dtype_for("cpu", "float32") == "float32" and dtype_for("cuda", "float32") == "float32"
    assert dtype_for("cpu", "bfloat16") == "bfloat16"
    with pytest.raises(MarginLensError, match="unknown dtype 'fp8'"):
        dtype_for("cpu", "fp8")


def test_the_dtype_is_in_the_fingerprint(monkeypatch, tiny_llama, tiny_reward):  # noqa: F811
    monkeypatch.setenv(CPU_BF16_ENV, "0")

    def tables(dtype):
        spec = ScoreSpec("d", policy=str(tiny_llama), explicit="reward_model", explicit_value=str(tiny_reward),
                         device="cpu", dtype=dtype)
        return {t.role: t for t in plan_tasks(spec)}

    f32, bf16, auto = tables("float32"), tables("bfloat16"), tables("auto")
    for role in ("policy", "reward"):
        assert f32[role].fingerprint != bf16[role].fingerprint  # two dtypes, two tables
        assert auto[role].fingerprint == f32[role].fingerprint  # auto is what it resolves to, not a third table
        assert bf16[role].to_json()["scorer"]["dtype"] == "bfloat16"
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert tables("auto")["policy"].fingerprint == bf16["policy"].fingerprint


def test_the_score_page_shows_and_sets_the_dtype():
    spec = score_form.with_dtype(score_form.build_spec("d", "m", "", "dataset", "", "cpu", 512, 256, "clean"),
                                 "bfloat16")
    assert spec.dtype == "bfloat16"
    with pytest.raises(MarginLensError, match="unknown dtype"):
        score_form.with_dtype(spec, "half")
    manifest = {"fingerprint": "logprob-m-1", "kind": "logprob", "model": "m", "rows": 3, "created": "now",
                "spec": {"role": "policy", "dtype": "bfloat16", "truncated_pairs": 0}}
    assert score_form.table_rows([manifest])[0]["dtype"] == "bfloat16"


def test_a_bf16_run_sums_float32_log_probs_close_to_float32(tiny_llama):  # noqa: F811
    data = pairs_of_mixed_lengths(8, seed=7)
    args = ([d["prompt"] for d in data], [d["chosen"] for d in data], [d["rejected"] for d in data])
    results = {}
    for dtype in ("float32", "bfloat16"):
        model, tokenizer, _ = load_causal_lm(str(tiny_llama), dtype=dtype)
        assert next(model.parameters()).dtype == getattr(torch, dtype)
        scorer = ImplicitScorer(model, tokenizer)
        hidden = torch.randn(64, model.config.hidden_size, dtype=getattr(torch, dtype))
        targets = torch.arange(64)
        logps = scorer._token_logps(hidden, targets)
        # The head runs in the model's dtype; its logits are promoted before the log-softmax.
        exact = torch.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)[torch.arange(64), targets]
        assert logps.dtype == torch.float32 and torch.allclose(logps, exact, atol=1e-5)
        if dtype == "bfloat16":
            in_bf16 = torch.log_softmax(model.get_output_embeddings()(hidden), dim=-1)[torch.arange(64), targets]
            assert not torch.allclose(logps, in_bf16.float(), atol=1e-5)  # bf16 log-softmax would differ
        results[dtype] = scorer.score(*args)
    for a, b in zip(results["float32"], results["bfloat16"], strict=True):
        assert (a.chosen_ntok, a.rejected_ntok) == (b.chosen_ntok, b.rejected_ntok)
        # The bf16 layers move each token's log-prob by ~0.02 nats on this random tiny model.
        assert abs(a.chosen_logp - b.chosen_logp) <= 0.1 + 0.04 * a.chosen_ntok
        assert abs(a.rejected_logp - b.rejected_logp) <= 0.1 + 0.04 * a.rejected_ntok
        assert a.chosen_logp != b.chosen_logp  # the bf16 run really ran in bf16


def test_cli_dtype_reaches_the_table_and_is_printed(ws, tmp_path, tiny_llama, capsys):  # noqa: F811
    from helpers_data import make_dataset
    from marginlens.core import jobs
    from marginlens.core.cli import main
    from marginlens.core.scoring.score_tables import score_manifest
    from tiny_models import conversational_records

    make_dataset(ws, "d", conversational_records(4, seed=1), tmp_path)
    assert main(["score", "d", "--workspace", str(ws.root), "--policy", str(tiny_llama), "--dtype", "bfloat16",
                 "--device", "cpu", "--detach"]) == 0
    printed = capsys.readouterr().out
    (job,) = jobs.list_jobs(ws, "score")
    assert job.wait(timeout=120).state == "done", job.log_tail()
    (task,) = job.spec["params"]["tasks"]
    assert task["scorer"]["dtype"] == "bfloat16" and f"policy: {task['fingerprint']}  bfloat16" in printed
    assert score_manifest(ws, "d", task["fingerprint"])["spec"]["dtype"] == "bfloat16"
    # Submitted again: the cached table's line names its dtype from the manifest.
    assert main(["score", "d", "--workspace", str(ws.root), "--policy", str(tiny_llama), "--dtype", "bfloat16",
                 "--device", "cpu"]) == 0
    assert f"policy: {task['fingerprint']}  bfloat16  (cached)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["score", "d", "--workspace", str(ws.root), "--dtype", "float16"])
