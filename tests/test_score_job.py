"""The "score" job end to end: results equal direct scoring, cache hits, columns, reward model, and
two data-parallel processes (`marginlens score --processes 2`: accelerate launch, CPU) merge to the single-process result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_data import make_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.logprobs import ImplicitScorer
from marginlens.core.scoring.models import load_causal_lm
from marginlens.core.scoring.score_spec import ScoreSpec, plan_tasks
from marginlens.core.scoring.score_submit import submit_scoring
from marginlens.core.scoring.score_tables import load_score_table
from marginlens.core.selection.margins import default_scorers
from marginlens.core.workspace import Workspace
from tiny_models import conversational_records, make_tiny_llama, single_thread, tiny_llama, tiny_reward  # noqa: F401

single_thread()

BUDGET = 300
MARGINLENS = shutil.which("marginlens", path=str(Path(sys.executable).parent)) or "marginlens"


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_llama, tiny_reward):  # noqa: F811
    """One workspace, one job: policy + reference + reward model on 40 pairs."""
    tmp = tmp_path_factory.mktemp("scored")
    ws = Workspace(tmp / "ws")
    make_dataset(ws, "d", conversational_records(40, seed=2), tmp)
    reference = make_tiny_llama(tmp / "reference", seed=1)
    spec = ScoreSpec("d", policy=str(tiny_llama), reference=str(reference), explicit="reward_model",
                     explicit_value=str(tiny_reward), device="cpu", token_budget=BUDGET, max_length=96, max_prompt_length=48)
    handle = submit_scoring(ws, spec)
    status = handle.job.wait(timeout=240)
    assert status.state == "done", handle.job.log_tail()
    return ws, spec, handle


def test_job_equals_direct_scoring(scored, tiny_llama):  # noqa: F811
    ws, spec, handle = scored
    table = load_score_table(ws, "d", handle.fingerprints["policy"]).to_pylist()
    pairs = ws.load_pairs("d")
    assert [r["pair_id"] for r in table] == pairs["pair_id"]  # dataset order, one row per pair
    model, tokenizer, _ = load_causal_lm(str(tiny_llama))
    direct = ImplicitScorer(model, tokenizer, token_budget=BUDGET, max_length=96, max_prompt_length=48).score(
        pairs["prompt"], pairs["chosen"], pairs["rejected"])
    for row, d in zip(table, direct, strict=True):
        assert (row["chosen_ntok"], row["rejected_ntok"]) == (d.chosen_ntok, d.rejected_ntok)
        assert row["chosen_logp"] == pytest.approx(d.chosen_logp, abs=1e-5)
        assert row["rejected_logp"] == pytest.approx(d.rejected_logp, abs=1e-5)
    assert 0 < sum(r["truncated"] for r in table) < len(table)  # truncation flagged per pair
    result = handle.job.result()
    assert result["tables"]["policy"] == handle.fingerprints["policy"]
    assert result["truncated"]["policy"] == sum(r["truncated"] for r in table)
    reference = load_score_table(ws, "d", handle.fingerprints["reference"]).to_pylist()
    assert reference[0]["chosen_logp"] != table[0]["chosen_logp"]  # a different model, its own table
    rewards = load_score_table(ws, "d", handle.fingerprints["reward"]).to_pylist()
    assert len(rewards) == 40 and len({round(r["chosen_reward"], 6) for r in rewards}) > 10
    # Readers that pick tables by default take the policy's table, not the reference's (same kind).
    assert default_scorers(ws, "d")["policy"] == handle.fingerprints["policy"]


def test_finished_fingerprint_is_a_cache_hit(scored):
    ws, spec, handle = scored
    again = submit_scoring(ws, spec)
    assert again.job is None and sorted(again.cached) == ["policy", "reference", "reward"]
    assert again.fingerprints == handle.fingerprints
    assert again.progress().state == "done"
    # Anything that changes the numbers changes the fingerprint: lengths, mode, model.
    other = plan_tasks(ScoreSpec("d", policy=spec.policy, device="cpu", max_length=97, max_prompt_length=48))
    assert other[0].fingerprint != handle.fingerprints["policy"]
    other = plan_tasks(ScoreSpec("d", policy=spec.policy, device="cpu", max_length=96, max_prompt_length=48,
                                 mode="reference"))
    assert other[0].fingerprint != handle.fingerprints["policy"]


def test_column_scores_need_no_job(scored):
    ws, _, _ = scored
    handle = submit_scoring(ws, ScoreSpec("d", policy=None, explicit="columns", explicit_value="score_chosen,score_rejected"))
    assert handle.job is None
    table = load_score_table(ws, "d", handle.fingerprints["columns"]).to_pylist()
    pairs = ws.load_pairs("d")
    assert [r["chosen_reward"] - r["rejected_reward"] for r in table] == [
        c - r for c, r in zip(pairs["score_chosen"], pairs["score_rejected"], strict=True)]


def test_bad_specs(scored, tmp_path):
    ws, _, _ = scored
    with pytest.raises(MarginLensError, match="unknown scorer 'nope'"):
        ScoreSpec("d", explicit="nope", explicit_value="a,b")
    with pytest.raises(MarginLensError, match="not an explicit-margin source"):
        ScoreSpec("d", explicit="logprob", explicit_value="x/y")
    with pytest.raises(MarginLensError, match="nothing to score"):
        submit_scoring(ws, ScoreSpec("d", policy=None))
    with pytest.raises(MarginLensError, match="no dataset named 'nope'"):
        submit_scoring(ws, ScoreSpec("nope"))
    with pytest.raises(MarginLensError, match="not found|not on the Hub"):
        submit_scoring(ws, ScoreSpec("d", policy=str(tmp_path / "missing-model"), device="cpu"))


def test_two_processes_merge_to_the_single_process_result(scored, tmp_path, tiny_llama):  # noqa: F811
    """Through the CLI, so what `--processes 2` launches (accelerate launch, on a CPU-only host) is tested."""
    ws_single, _, single = scored
    ws = Workspace(tmp_path / "ws")
    make_dataset(ws, "d", conversational_records(40, seed=2), tmp_path)
    out = subprocess.run([MARGINLENS, "score", "d", "--policy", str(tiny_llama), "--device", "cpu",
                          "--token-budget", str(BUDGET), "--max-length", "96", "--max-prompt-length", "48",
                          "--processes", "2", "--detach", "--workspace", str(ws.root)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert out.returncode == 0, out.stderr
    spec = ScoreSpec("d", policy=str(tiny_llama), device="cpu", token_budget=BUDGET, max_length=96,
                     max_prompt_length=48)
    handle = submit_scoring(ws, spec)  # joins the job the CLI started
    assert handle.job.spec["launcher"][2:4] == ["accelerate.commands.launch", "--multi_gpu"]
    status = handle.job.wait(timeout=240)
    assert status.state == "done", handle.job.log_tail()
    assert status.done == status.total == 40
    parts = list((handle.job.results_dir / handle.fingerprints["policy"]).glob("part-rank*.parquet"))
    assert {p.name.split("-")[1] for p in parts} == {"rank0", "rank1"}  # both ranks really scored
    merged = load_score_table(ws, "d", handle.fingerprints["policy"]).to_pylist()
    expected = load_score_table(ws_single, "d", single.fingerprints["policy"]).to_pylist()
    assert handle.fingerprints["policy"] == single.fingerprints["policy"]
    assert [r["pair_id"] for r in merged] == [r["pair_id"] for r in expected]
    for m, e in zip(merged, expected, strict=True):
        assert (m["chosen_ntok"], m["rejected_ntok"], m["truncated"]) == (
            e["chosen_ntok"], e["rejected_ntok"], e["truncated"])
        # Other batch shapes on each rank: equal up to float32 rounding.
        assert (m["chosen_logp"], m["rejected_logp"]) == pytest.approx((e["chosen_logp"], e["rejected_logp"]),
                                                                       abs=1e-4)
