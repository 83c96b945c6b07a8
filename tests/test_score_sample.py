"""Scoring a sample (issue 11, part 2): a seeded, nested sample; a larger one scores only the new pairs;
selection, the CLI and the counts work on the scored part and say "N of M pairs scored"."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_data import make_dataset
from marginlens.core.data.pair_sample import sample_positions
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.score_parts import written_ids
from marginlens.core.scoring.score_spec import ScoreJobParams, ScoreSpec, plan_tasks
from marginlens.core.scoring.score_submit import submit_scoring
from marginlens.core.scoring.score_tables import load_score_table
from marginlens.core.selection.margins import load_margins, scored_counts, scored_note
from marginlens.core.selection.select import SelectionSpec, select
from tiny_models import conversational_records, single_thread, tiny_llama  # noqa: F401

single_thread()

MARGINLENS = shutil.which("marginlens", path=str(Path(sys.executable).parent)) or "marginlens"
IDS = [f"pair-{i}" for i in range(100)]


def test_the_sample_is_seeded_stable_nested_and_independent_of_row_order():
    small, large = sample_positions(IDS, 20, seed=1), sample_positions(IDS, 50, seed=1)
    assert len(small) == 20 and set(small) <= set(large)  # nested: a larger N is a superset
    assert list(small) == sorted(small) == list(sample_positions(IDS, 20, seed=1))  # dataset order, stable
    assert set(small) != set(sample_positions(IDS, 20, seed=2))
    reordered = IDS[::-1]
    assert {IDS[i] for i in small} == {reordered[i] for i in sample_positions(reordered, 20, seed=1)}
    assert list(sample_positions(IDS, None)) == list(range(100)) == list(sample_positions(IDS, 500))
    with pytest.raises(MarginLensError, match="at least 1"):
        sample_positions(IDS, 0)
    with pytest.raises(MarginLensError, match="at least 1 pair"):
        ScoreSpec("d", sample=0)


def test_job_json_of_a_whole_dataset_scoring_is_unchanged(tiny_llama):  # noqa: F811
    spec = ScoreSpec("d", policy=str(tiny_llama), device="cpu")
    whole = ScoreJobParams.for_tasks(spec, "fp", plan_tasks(spec))
    assert "sample" not in whole.to_json() and "seed" not in whole.to_json()  # same job ids as before
    sampled = dataclasses.replace(whole, sample=10, seed=4)
    back = ScoreJobParams.from_json(sampled.to_json())
    assert (back.sample, back.seed) == (10, 4) and back.to_json() == sampled.to_json()
    assert ScoreJobParams.from_json(whole.to_json()).sample is None


def _done(handle) -> None:
    status = handle.job.wait(timeout=240)
    assert status.state == "done", handle.job.log_tail()


def test_a_larger_sample_scores_only_the_new_pairs(ws, tmp_path, tiny_llama):  # noqa: F811
    pairs = make_dataset(ws, "d", conversational_records(30, seed=5), tmp_path)
    pair_ids = list(pairs["pair_id"])
    spec = ScoreSpec("d", policy=str(tiny_llama), device="cpu", token_budget=300, max_length=96,
                     max_prompt_length=48, sample=8, seed=3)
    first = submit_scoring(ws, spec)
    assert (first.targeted, first.total) == (8, 30)
    _done(first)
    fp = first.fingerprints["policy"]
    table8 = {r["pair_id"]: r for r in load_score_table(ws, "d", fp).to_pylist()}
    assert set(table8) == {pair_ids[i] for i in sample_positions(pair_ids, 8, seed=3)}
    assert submit_scoring(ws, spec).job is None  # the same sample again: cached

    # the CLI selects from the scored part and says so
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([MARGINLENS, "select", "d", "--metric", "implicit", "--ratio", "0.5", "--out", "sel.jsonl",
                          "--workspace", str(ws.root)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "8 of 30 pairs scored" in out.stdout and "selected 4 of 8 candidate pairs" in out.stdout

    second = submit_scoring(ws, dataclasses.replace(spec, sample=20))
    _done(second)
    assert second.fingerprints["policy"] == fp  # the same table, grown
    new = written_ids(second.job.results_dir / fp)
    assert len(new) == 12 and not new & set(table8)  # only the 12 pairs not scored yet were computed
    table20 = {r["pair_id"]: r for r in load_score_table(ws, "d", fp).to_pylist()}
    assert set(table20) == {pair_ids[i] for i in sample_positions(pair_ids, 20, seed=3)}
    assert all(table20[pid] == row for pid, row in table8.items())  # earlier numbers kept as they were

    margins = load_margins(ws, "d", policy_fp=fp)
    assert scored_counts(margins) == (20, 30)
    assert scored_note(margins).startswith("20 of 30 pairs scored")
    for metric in ("implicit", "random"):  # random too draws from the scored part only
        selection = select(margins, SelectionSpec(metric=metric, ratio=0.5))
        assert selection.k == 10 and set(selection.pair_ids) <= set(table20)
        assert selection.counts()["scored"] == 20 and selection.n_missing == 10

    whole = submit_scoring(ws, dataclasses.replace(spec, sample=None))
    _done(whole)
    assert len(written_ids(whole.job.results_dir / fp)) == 10
    margins = load_margins(ws, "d", policy_fp=fp)
    assert scored_counts(margins) == (30, 30) and scored_note(margins) is None
