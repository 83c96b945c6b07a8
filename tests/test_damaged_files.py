"""Damaged workspace files, made for real on real files: every command that reads one stops with the file,
what is wrong and the repair command (`marginlens doctor --repair`), never a traceback; a score job's resume
quarantines a part it cannot read and scores its pairs again; `import` brings back a dataset whose data is
gone; the Data, Explore and Score pages show the damage instead of failing.

The repairs themselves: tests/test_doctor.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers_app import DATASET, POLICY_FP, app_test, build_workspace
from helpers_damage import assert_names_damage, cli, cut_in_half, shown
from helpers_data import standard_records, wait_until, write_jsonl
from marginlens.core import jobs
from marginlens.core.job_status import JobState
from marginlens.core.scoring.score_tables import load_score_table, table_dir
from marginlens.core.workspace import Workspace
from tiny_models import conversational_records, single_thread, tiny_llama  # noqa: F401

single_thread()

def two_datasets(ws: Workspace, tmp_path: Path) -> dict[str, Path]:
    sources = {"a": write_jsonl(tmp_path / "a.jsonl", standard_records(30)),
               "b": write_jsonl(tmp_path / "b.jsonl", standard_records(20, seed=3))}
    for name, source in sources.items():
        done = cli(ws, "import", str(source), "--name", name)
        assert done.returncode == 0, done.stderr
    return sources


def test_a_cut_score_table_is_named_by_info_select_score_and_explore(tmp_path):
    ws = build_workspace(tmp_path / "ws", n=30)
    made = cli(ws, "score", DATASET, "--policy", "none", "--scores", "score_chosen,score_rejected")
    assert made.returncode == 0, made.stderr
    (columns_fp,) = [p.name for p in (ws.scores_dir / DATASET).iterdir() if p.name.startswith("reward-")]
    policy = table_dir(ws, DATASET, POLICY_FP) / "scores.parquet"
    cut_in_half(policy)
    assert_names_damage(cli(ws, "info", DATASET), ws, policy)
    assert_names_damage(cli(ws, "select", DATASET, "--metric", "map", "--ratio", "0.5", "--out", "sel.jsonl"),
                        ws, policy)

    at = app_test("explore_page.py", ws)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(f"{policy}: damaged: cannot be read as Parquet" in shown(e) for e in at.error), at.error

    columns = table_dir(ws, DATASET, columns_fp) / "scores.parquet"
    cut_in_half(columns)  # `score` asks it whether it holds every pair: it must not answer "cached"
    assert_names_damage(cli(ws, "score", DATASET, "--policy", "none", "--scores", "score_chosen,score_rejected"),
                        ws, columns)


def test_a_cut_part_is_quarantined_and_the_resume_scores_its_pairs_again(ws, tmp_path, tiny_llama):  # noqa: F811
    from helpers_data import make_dataset

    make_dataset(ws, "d", conversational_records(300, seed=4), tmp_path)
    started = cli(ws, "score", "d", "--policy", str(tiny_llama), "--device", "cpu", "--token-budget", "32",
                  "--detach")
    assert started.returncode == 0, started.stderr
    (job,) = jobs.list_jobs(ws, "score")
    wait_until(lambda: len(list(job.results_dir.glob("*/part-*.parquet"))) >= 3 or not job.status().live, "parts", timeout=180)
    status = job.status()
    assert status.live, job.log_tail()  # hundreds of one-pair batches: still going after three
    os.kill(status.pid, signal.SIGKILL)
    wait_until(lambda: job.status().state is JobState.INTERRUPTED, "the killed job to read as interrupted", timeout=180)
    folder = sorted(job.results_dir.glob("*/part-*.parquet"))[0].parent
    fp = folder.name
    part = sorted(folder.glob("part-*.parquet"))[0]
    before = {row["pair_id"]: row for row in pq.read_table(part).to_pylist()}
    cut_in_half(part)
    cut_size = part.stat().st_size

    resumed = cli(ws, "jobs", "resume", job.id)
    assert resumed.returncode == 0, resumed.stderr
    followed = cli(ws, "jobs", "follow", job.id)
    assert followed.returncode == 0, (followed.stderr, job.log_tail(30))
    assert job.status().state is JobState.DONE
    (kept,) = (job.dir / "quarantine").rglob(part.name)  # moved aside, not deleted
    assert kept.stat().st_size == cut_size and not part.exists()
    assert f"part {part} cannot be read" in job.log_tail(400)
    table = {row["pair_id"]: row for row in load_score_table(ws, "d", fp).to_pylist()}
    assert len(table) == 300
    for pair_id, row in before.items():  # scored again, to the same numbers
        assert table[pair_id]["chosen_ntok"] == row["chosen_ntok"]
        assert table[pair_id]["chosen_logp"] == pytest.approx(row["chosen_logp"], abs=1e-5)
        assert table[pair_id]["rejected_logp"] == pytest.approx(row["rejected_logp"], abs=1e-5)


def test_garbage_in_status_json_is_listed_as_damaged_and_the_score_page_goes_on(ws, tmp_path, tiny_llama):  # noqa: F811
    from helpers_data import make_dataset

    make_dataset(ws, "d", conversational_records(12, seed=1), tmp_path)
    scored = cli(ws, "score", "d", "--policy", str(tiny_llama), "--device", "cpu")
    assert scored.returncode == 0, scored.stderr
    from marginlens.core.data.import_job import import_spec, submit_import

    # a second job, of another kind
    other = submit_import(ws, import_spec(write_jsonl(tmp_path / "e.jsonl", standard_records(5)), "e"))
    assert other.wait(poll=0.1, timeout=120).state is JobState.DONE, other.log_tail()
    (job,) = jobs.list_jobs(ws, "score")
    status = job.dir / "status.json"
    status.write_text("{\"state\": \"done\", \"done\": 1")  # cut short

    listing = cli(ws, "jobs")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    (line,) = [row for row in listing.stdout.splitlines() if row.startswith(job.id)]
    assert " damaged " in line and f"{status}: damaged: not valid JSON" in line
    assert f"repair: marginlens doctor --repair --workspace {ws.root}" in line
    (line,) = [row for row in listing.stdout.splitlines() if row.startswith(other.id)]
    assert " done " in line  # the other jobs still list
    assert_names_damage(cli(ws, "jobs", "show", job.id), ws, status)
    assert_names_damage(cli(ws, "jobs", "resume", job.id), ws, status)

    at = app_test("score_page.py", ws)
    at.session_state["dataset"] = "d"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(f"{status}: damaged: not valid JSON" in shown(e) for e in at.error), at.error
    assert any("Finished score tables" in h.value for h in at.subheader)  # the page went on past the panel


def test_a_deleted_pairs_arrow_is_listed_named_and_brought_back_by_import(ws, tmp_path):
    sources = two_datasets(ws, tmp_path)
    pairs = ws.pairs_path("a")
    pairs.unlink()
    listing = cli(ws, "list")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    (line_a,) = [row for row in listing.stdout.splitlines() if row.startswith("a ")]
    assert "DAMAGED" in line_a and f"{pairs}: damaged: missing" in line_a
    (line_b,) = [row for row in listing.stdout.splitlines() if row.startswith("b ")]
    assert " 20 " in line_b  # the other dataset still lists
    assert f"marginlens doctor --repair --workspace {ws.root}" in listing.stderr
    assert_names_damage(cli(ws, "info", "a"), ws, pairs)
    assert_names_damage(cli(ws, "select", "a", "--metric", "explicit", "--ratio", "0.5", "--out", "a.jsonl"), ws, pairs)

    again = cli(ws, "import", str(sources["a"]), "--name", "a", "--replace")
    assert again.returncode == 0, again.stderr
    assert "no-op" not in again.stdout and "imported 30 of 30 rows" in again.stdout
    assert ws.load_pairs("a").num_rows == 30

    cut_in_half(ws.pairs_path("b"))  # the same source again, without --replace: data that does not read back
    again = cli(ws, "import", str(sources["b"]), "--name", "b")
    assert again.returncode == 0 and "imported 20 of 20 rows" in again.stdout, (again.stdout, again.stderr)
    assert ws.load_pairs("b").num_rows == 20
    unchanged = cli(ws, "import", str(sources["b"]), "--name", "b")
    assert "no-op" in unchanged.stdout  # intact: the no-op it always was


def test_an_invalid_manifest_is_named_everywhere_and_replaced_by_import_replace(ws, tmp_path):
    sources = two_datasets(ws, tmp_path)
    manifest = ws.manifest_path("a")
    manifest.write_text("{\"name\": \"a\", \"data\": ")
    listing = cli(ws, "list")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    (line_a,) = [row for row in listing.stdout.splitlines() if row.startswith("a ")]
    assert f"{manifest}: damaged: not valid JSON" in line_a
    assert any(row.startswith("b ") and " 20 " in row for row in listing.stdout.splitlines())
    assert_names_damage(cli(ws, "info", "a"), ws, manifest)
    assert_names_damage(cli(ws, "select", "a", "--metric", "explicit", "--ratio", "0.5", "--out", "a.jsonl"),
                        ws, manifest)

    data = app_test("data_page.py", ws)
    data.session_state["dataset"] = "b"  # another dataset selected: the page works as ever
    data.run()
    assert not data.exception and not data.error, ([e.message for e in data.exception], data.error)
    listing = data.dataframe[0].value
    assert listing["name"].tolist() == ["a", "b"]
    assert listing["status"].iloc[0].startswith(f"damaged: {manifest}: damaged: not valid JSON")
    assert listing["status"].iloc[1] == "ok" and listing["pairs"].iloc[1] == 20
    assert {m.label: m.value for m in data.metric}["Pairs"] == "20"
    data.selectbox(key="_dataset_picker").select("a").run()  # the damaged one: its error, not a traceback
    assert not data.exception, [e.message for e in data.exception]
    assert any(f"{manifest}: damaged: not valid JSON" in shown(e) for e in data.error), data.error

    explore = app_test("explore_page.py", ws)
    explore.session_state["dataset"] = "a"
    explore.run()
    assert not explore.exception, [e.message for e in explore.exception]
    assert any(f"{manifest}: damaged" in shown(e) and "marginlens doctor --repair" in shown(e)
               for e in explore.error), explore.error

    plain = cli(ws, "import", str(sources["a"]), "--name", "a")  # without --replace: says what to do
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "pass --replace" in plain.stderr and str(manifest) in plain.stderr
    replaced = cli(ws, "import", str(sources["a"]), "--name", "a", "--replace")
    assert replaced.returncode == 0 and "imported 30 of 30 rows" in replaced.stdout, replaced.stderr
    assert ws.load_pairs("a").num_rows == 30
