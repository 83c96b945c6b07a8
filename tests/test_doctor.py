"""`marginlens doctor [--repair]` on real damage: the check lists every damaged file with what is wrong and
the fix, and moves nothing; --repair moves what is damaged to <workspace>/quarantine/ (never deletes it),
imports datasets again from their recorded source, rebuilds job status files, drops a damaged score table
and reopens the job that made it, so scoring again computes only what is missing."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from helpers_app import app_test
from helpers_damage import cli, cut_in_half, shown
from helpers_data import make_dataset, standard_records, wait_until, write_jsonl
from marginlens.core import jobs
from marginlens.core.data.import_job import import_spec, submit_import
from marginlens.core.job_status import JobState
from marginlens.core.scoring.score_tables import load_score_table, table_dir
from tiny_models import conversational_records, single_thread, tiny_llama  # noqa: F401

single_thread()


def flip_a_text_byte(path, text: bytes) -> None:
    """Change one letter inside a stored string: the file still reads, only its checksum tells."""
    data = bytearray(path.read_bytes())
    at = data.index(text)
    data[at] = ord("R")
    path.write_bytes(bytes(data))


def imported(ws, tmp_path, name: str, n: int, seed: int = 0, job: bool = False):
    source = write_jsonl(tmp_path / f"{name}.jsonl", standard_records(n, seed=seed))
    if job:  # as the Data page imports: a job whose spec records the source
        done = submit_import(ws, import_spec(source, name)).wait(poll=0.1, timeout=120)
        assert done.state is JobState.DONE
    else:
        assert cli(ws, "import", str(source), "--name", name).returncode == 0
    return source


def test_check_lists_every_damaged_file_and_repair_brings_the_datasets_back(ws, tmp_path):
    imported(ws, tmp_path, "cut", 30)
    imported(ws, tmp_path, "flipped", 25, seed=1)
    imported(ws, tmp_path, "lost", 20, seed=2, job=True)  # manifest lost; its import job knows the source
    imported(ws, tmp_path, "orphan", 15, seed=3)  # manifest lost; nothing knows the source
    imported(ws, tmp_path, "old", 10, seed=4)  # written before checksums: checked by reading it whole
    ids = {name: ws.load_pairs(name)["pair_id"] for name in ("cut", "flipped", "lost", "old")}
    cut, flipped = ws.pairs_path("cut"), ws.pairs_path("flipped")
    cut_in_half(cut)
    cut_size = cut.stat().st_size
    flip_a_text_byte(flipped, b"Question 3:")
    manifest = ws.manifest_path("old")
    old = json.loads(manifest.read_text())
    assert old.pop("pairs_sha256")  # recorded at import, since this change
    manifest.write_text(json.dumps(old))
    lost, orphan = ws.manifest_path("lost"), ws.manifest_path("orphan")
    lost.write_text("{\"name\": \"lost\", ")
    orphan.write_text("[]")
    (job,) = jobs.list_jobs(ws, "import")
    (job.dir / "status.json").write_text("\x00\x00\x00")

    check = cli(ws, "doctor")
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr
    out = check.stdout
    assert out.startswith(f"checked {ws.root}: 5 datasets, 0 score tables, 1 jobs")
    assert f"damaged dataset data: {cut}\n  what: cannot be read as an Arrow stream" in out
    assert f"damaged dataset data: {flipped}\n  what: its content changed since it was written (sha256" in out
    assert f"damaged dataset manifest: {lost}\n  what: not valid JSON" in out
    assert f"imports 'lost' again from {tmp_path / 'lost.jsonl'} (the source its import job {job.id} read)" in out
    assert f"damaged dataset manifest: {orphan}\n  what: holds a JSON list where an object belongs" in out
    assert "then import it again: marginlens import SOURCE --name orphan" in out
    assert f"damaged job status: {job.dir / 'status.json'}\n  what: not valid JSON" in out
    assert str(ws.dataset_dir("old")) not in out  # intact, though it has no checksum
    assert f"5 problems: `marginlens doctor --repair --workspace {ws.root}` repairs them" in out
    assert not (ws.root / "quarantine").exists() and cut.exists() and lost.exists()  # checking moves nothing

    page = app_test("data_page.py", ws)  # the Data page runs the same check, read-only
    page.session_state["dataset"] = "old"
    page.run()
    page.button(key="_workspace_check").click().run()
    assert not page.exception, [e.message for e in page.exception]
    findings = next(d.value for d in page.dataframe if "repair" in d.value.columns)
    assert sorted(findings["file"]) == sorted(str(p) for p in (cut, flipped, lost, orphan, job.dir / "status.json"))
    assert any("5 damaged" in shown(e) and "marginlens doctor --repair" in shown(e) for e in page.error)

    repair = cli(ws, "doctor", "--repair")
    assert "Traceback" not in repair.stderr, repair.stderr
    assert repair.returncode == 1, repair.stdout  # the orphan's source is unknown: left to the user
    assert f"NOT repaired dataset manifest: {orphan}" in repair.stdout
    assert repair.stdout.count("\nrepaired ") == 4
    for name in ("cut", "flipped", "lost", "old"):
        assert ws.load_pairs(name)["pair_id"] == ids[name]  # usable again, the same pairs
    ws.verify_dataset("flipped")  # the flipped letter is back
    assert "the same data as before: its score tables still apply" in repair.stdout
    assert jobs.get_job(ws, job.id).status().state is JobState.DONE  # its result.json was there
    (stamp,) = (ws.root / "quarantine").iterdir()  # moved aside, never deleted
    assert (stamp / cut.relative_to(ws.root)).stat().st_size == cut_size
    assert (stamp / "datasets" / "orphan" / "manifest.json").read_text() == "[]"
    assert (stamp / "datasets" / "lost" / "manifest.json").exists()
    assert (stamp / job.dir.relative_to(ws.root) / "status.json").read_bytes() == b"\x00\x00\x00"
    assert "orphan" not in ws.dataset_names()

    again = cli(ws, "doctor")
    assert again.returncode == 0 and "no damaged file found" in again.stdout, again.stdout


def test_repair_drops_a_damaged_table_and_scoring_again_computes_only_what_is_missing(ws, tmp_path, tiny_llama):  # noqa: F811
    make_dataset(ws, "d", conversational_records(24, seed=5), tmp_path)
    score = ["score", "d", "--policy", str(tiny_llama), "--device", "cpu", "--token-budget", "32"]
    first = cli(ws, *score)
    assert first.returncode == 0, first.stderr
    (job,) = jobs.list_jobs(ws, "score")
    # the CLI returns at "done" and the worker exits just after; the doctor rightly skips a job a worker holds
    wait_until(lambda: not job.is_alive(), "the score worker to exit", timeout=60)
    fp = job.result()["tables"]["policy"]
    before = load_score_table(ws, "d", fp).to_pylist()
    parts = sorted((job.results_dir / fp).glob("part-*.parquet"))
    assert len(parts) > 2  # a part per batch
    lost_ids = set(pq.read_table(parts[1], columns=["pair_id"]).column("pair_id").to_pylist())
    table = table_dir(ws, "d", fp) / "scores.parquet"
    cut_in_half(table)
    cut_in_half(parts[1])
    (job.dir / "status.json").write_text("{\"state\": ")

    check = cli(ws, "doctor")
    assert check.returncode == 1, check.stdout
    assert f"damaged score table: {table}\n  what: cannot be read as Parquet" in check.stdout
    assert f"damaged job file: {parts[1]}\n  what: cannot be read as Parquet" in check.stdout
    assert f"damaged job status: {job.dir / 'status.json'}" in check.stdout

    repair = cli(ws, "doctor", "--repair")
    assert repair.returncode == 0, (repair.stdout, repair.stderr)
    assert f"`marginlens jobs resume {job.id}` rebuilds it from the parts that job kept" in repair.stdout
    assert "`marginlens score d` computes it again (only this table: the others are kept)" in repair.stdout
    assert not table.exists() and not parts[1].exists()
    status = job.status()
    assert status.state is JobState.INTERRUPTED and "moved to quarantine" in status.message  # reopened

    kept = set((job.results_dir / fp).glob("part-*.parquet"))
    again = cli(ws, *score)  # the same command: the same job, which rebuilds the table from its parts
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert job.status().state is JobState.DONE
    new = set((job.results_dir / fp).glob("part-*.parquet")) - kept
    assert {i for p in new for i in pq.read_table(p, columns=["pair_id"]).column("pair_id").to_pylist()} == lost_ids
    after = load_score_table(ws, "d", fp).to_pylist()
    assert [r["pair_id"] for r in after] == [r["pair_id"] for r in before]
    for row, old in zip(after, before, strict=True):
        assert row["chosen_logp"] == pytest.approx(old["chosen_logp"], abs=1e-5)
        assert row["rejected_logp"] == pytest.approx(old["rejected_logp"], abs=1e-5)
    assert cli(ws, "doctor").returncode == 0


def test_a_lost_result_json_is_quarantined_and_the_job_resumes_to_done(ws, tmp_path):
    source = write_jsonl(tmp_path / "e.jsonl", standard_records(8))
    job = submit_import(ws, import_spec(source, "e"))
    assert job.wait(poll=0.1, timeout=120).state is JobState.DONE
    (job.dir / "result.json").write_text("{\"name\": \"e\", \"summ")
    other = submit_import(ws, import_spec(source, "e2"))
    assert other.wait(poll=0.1, timeout=120).state is JobState.DONE
    (other.dir / "spec.json").write_text("")

    repair = cli(ws, "doctor", "--repair")
    assert repair.returncode == 0, (repair.stdout, repair.stderr)
    assert f"repaired job result: {job.dir / 'result.json'}" in repair.stdout
    assert f"repaired job spec: {other.dir / 'spec.json'}" in repair.stdout
    assert not other.dir.exists() and [j.id for j in jobs.list_jobs(ws)] == [job.id]
    assert job.status().state is JobState.INTERRUPTED
    resumed = cli(ws, "jobs", "resume", job.id)
    assert resumed.returncode == 0, resumed.stderr
    followed = cli(ws, "jobs", "follow", job.id)
    assert followed.returncode == 0, followed.stderr
    assert job.status().state is JobState.DONE and job.result()["name"] == "e"
