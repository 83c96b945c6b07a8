"""Scoring a sample (issue 11, part 2): a seeded, nested sample; a larger one scores only the new pairs;
selection, the CLI and the counts work on the scored part and say "N of M pairs scored"."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_data import make_dataset
from marginlens.core.atomic import read_json
from marginlens.core.data.pair_sample import sample_positions
from marginlens.core.errors import MarginLensError
from marginlens.core.scoring.score_parts import written_ids
from marginlens.core.scoring.score_spec import ScoreJobParams, ScoreSpec, plan_tasks
from marginlens.core.scoring.score_submit import submit_scoring
from marginlens.core.scoring.score_tables import load_score_table, score_manifest, table_lock
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


EVERY_BATCH = {"MARGINLENS_SCORE_FLUSH_SECONDS": "0"}  # a part per batch: a cancel keeps what was scored


def _wait_done_at_least(job, n: int) -> None:
    deadline = time.monotonic() + 120
    while (status := job.status()).done < n:
        assert status.state not in ("done", "failed", "cancelled"), job.log_tail()
        assert time.monotonic() < deadline, job.log_tail()
        time.sleep(0.05)


def test_a_cancelled_sample_resumes_after_a_smaller_one_filled_part_of_it(ws, tmp_path, tiny_llama):  # noqa: F811
    """Sample 150 cancelled part way, sample 100 in full, sample 150 again: the resume (the same job) once
    recomputed its to-do list from the grown table and failed merging the parts it had written."""
    pairs = make_dataset(ws, "d", conversational_records(200, seed=6), tmp_path)
    pair_ids = list(pairs["pair_id"])
    spec = ScoreSpec("d", policy=str(tiny_llama), device="cpu", token_budget=32, sample=150, seed=2)
    first = submit_scoring(ws, spec, env=EVERY_BATCH)
    _wait_done_at_least(first.job, 10)
    first.job.cancel()
    assert first.job.wait(timeout=60).state == "cancelled", first.job.log_tail()
    fp = first.fingerprints["policy"]
    sample100 = {pair_ids[i] for i in sample_positions(pair_ids, 100, seed=2)}
    assert written_ids(first.job.results_dir / fp) & sample100  # the case: the smaller sample scores some again

    middle = submit_scoring(ws, dataclasses.replace(spec, sample=100), env=EVERY_BATCH)
    _done(middle)
    table100 = {r["pair_id"]: r for r in load_score_table(ws, "d", fp).to_pylist()}

    resumed = submit_scoring(ws, spec, env=EVERY_BATCH)
    assert resumed.job.id == first.job.id
    _done(resumed)
    # every start of the job works on the list its first start chose, not on what the table lacks now
    assert len(read_json(first.job.results_dir / fp / "todo.json")["positions"]) == 150
    table150 = {r["pair_id"]: r for r in load_score_table(ws, "d", fp).to_pylist()}
    assert set(table150) == {pair_ids[i] for i in sample_positions(pair_ids, 150, seed=2)}
    assert all(table150[pid] == row for pid, row in table100.items())


def test_two_jobs_growing_one_table_both_land(ws, tmp_path, tiny_llama):  # noqa: F811
    """Two samples scored at once into the same table: each job merges under the table's lock, re-reading
    the table there, so the later write keeps the earlier one's pairs."""
    pairs = make_dataset(ws, "d", conversational_records(30, seed=7), tmp_path)
    pair_ids = list(pairs["pair_id"])
    spec = ScoreSpec("d", policy=str(tiny_llama), device="cpu", token_budget=300, max_length=96,
                     max_prompt_length=48, sample=8, seed=1)
    fp = plan_tasks(spec)[0].fingerprint
    with table_lock(ws, "d", fp):  # both jobs reach their merge while the table is locked
        one = submit_scoring(ws, spec)
        two = submit_scoring(ws, dataclasses.replace(spec, seed=2))
        assert one.job.id != two.job.id
        deadline = time.monotonic() + 240
        while not all((h.job.results_dir / fp / "finished-rank0.json").exists() for h in (one, two)):
            assert time.monotonic() < deadline, one.job.log_tail() + two.job.log_tail()
            time.sleep(0.1)
        time.sleep(1.0)
        assert one.job.status().state == two.job.status().state == "running"  # waiting for the lock
        assert score_manifest(ws, "d", fp) is None
    _done(one)
    _done(two)
    expected = {pair_ids[i] for seed in (1, 2) for i in sample_positions(pair_ids, 8, seed=seed)}
    assert set(load_score_table(ws, "d", fp).column("pair_id").to_pylist()) == expected
