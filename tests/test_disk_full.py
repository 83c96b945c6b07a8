"""A full disk is a clear error everywhere: `marginlens import` into a full workspace says "no space left on
device" without a traceback and leaves the previous import byte for byte; a job whose worker runs out of
space ends failed with that message (not as a dead worker), which `marginlens jobs` shows; and the worker's
last status write gets through a completely full disk.

The real thing is a 2 MB tmpfs mounted for the test (as root). Where mounting is refused those tests skip,
and the simulations below (the write call raising ENOSPC) still run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from helpers_app import records
from marginlens.core import cli, job_disk, jobs
from marginlens.core.atomic import DiskFullError, is_disk_full, write_bytes, write_json
from marginlens.core.data.import_job import import_spec, submit_import
from marginlens.core.job_status import JobState
from marginlens.core.job_worker import run_worker
from marginlens.core.workspace import Workspace

MARGINLENS = shutil.which("marginlens", path=str(Path(sys.executable).parent)) or "marginlens"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def write_source(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records(n)), encoding="utf-8")
    return path


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MB tmpfs, unmounted afterwards; skips the test where mounting is refused."""
    folder = tmp_path / "small-fs"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the simulations still run")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> Path:
    """About 9 MB of pairs: more than the small filesystem holds."""
    return write_source(tmp_path_factory.mktemp("big") / "big.jsonl", 40_000)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".import.lock"}


def fill(folder: Path) -> Path:
    """Write a file until the filesystem refuses another byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (folder / "probe").write_bytes(b"x" * 4096)
    return filler


# ------------------------------------------------------------------------------------------------
# On a real full filesystem
# ------------------------------------------------------------------------------------------------
def test_import_into_a_full_workspace_says_so_and_keeps_the_previous_import(small_fs, tmp_path, big_source):
    ws = small_fs / "workspace"
    small = write_source(tmp_path / "small.jsonl", 30)
    first = subprocess.run([MARGINLENS, "import", str(small), "--name", "d", "--workspace", str(ws)],
                           capture_output=True, text=True, env=ENV, timeout=120)
    assert first.returncode == 0, first.stderr
    before = snapshot(ws / "datasets")

    full = subprocess.run([MARGINLENS, "import", str(big_source), "--name", "d", "--replace", "--workspace", str(ws)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert full.returncode == 2, (full.stdout, full.stderr)
    assert "Traceback" not in full.stderr and "Errno" not in full.stderr, full.stderr
    assert full.stderr.startswith(f"error: no space left on device writing under {ws}"), full.stderr
    assert f"on {small_fs}" in full.stderr and "marginlens jobs clean --all-finished" in full.stderr
    assert snapshot(ws / "datasets") == before  # the manifest and the data it points at, byte for byte
    assert Workspace(ws).load_pairs("d").num_rows == 30


def test_a_job_that_runs_out_of_space_ends_failed_with_the_message(small_fs, big_source):
    ws = Workspace(small_fs / "workspace")
    job = submit_import(ws, import_spec(big_source, "d"))  # a real worker process writing into the small fs
    status = job.wait(poll=0.1, timeout=120)
    assert status.state is JobState.FAILED, (status, job.log_tail())
    assert status.message.startswith(f"no space left on device writing under {ws.root}"), status.message
    assert "dead" not in status.message
    assert "No space left on device" in job.log_tail()  # the traceback still reached the log
    assert not (job.dir / job_disk.RESERVE_FILE).exists()  # spent on the record, not left behind
    assert not ws.has_dataset("d")

    listed = subprocess.run([MARGINLENS, "jobs", "--workspace", str(ws.root)], capture_output=True, text=True,
                            env=ENV, timeout=60)
    (line,) = [row for row in listed.stdout.splitlines() if row.startswith(job.id)]
    assert " failed " in line and "no space left on device writing under" in line, line


@pytest.mark.parametrize("reserve", [True, False], ids=["reserve", "in-place"])
def test_the_final_status_gets_through_a_completely_full_disk(small_fs, reserve):
    """With the worker's reserve, it is freed and the status written atomically; without one (a disk already
    full when the worker started), status.json is rewritten in place."""
    ws = Workspace(small_fs / "workspace")
    job = jobs.Job(ws.jobs_dir / "import-full")
    job.dir.mkdir(parents=True)
    write_json(job.dir / "spec.json", {"kind": "import", "params": {}, "job_id": job.id})
    ctx = jobs.JobContext(job, ws)
    ctx.start()
    if reserve:
        job_disk.reserve_space(job.dir)
        assert job_disk.bytes_on_disk(job.dir / job_disk.RESERVE_FILE) >= job_disk.RESERVE_BYTES
    fill(small_fs)
    inode = (job.dir / "status.json").stat().st_ino
    with pytest.raises(DiskFullError, match=r"no space left on device writing .*status\.json \(\d+ B needed; 0 B free"):
        ctx.progress(5, 10, force=True)  # an ordinary write fails, naming the file and the bytes
    ctx.set_state(JobState.FAILED, "no space left on device writing somewhere", finished="2026-01-01T00:00:00Z")
    status = job.status()
    assert (status.state, status.message, status.done) == (JobState.FAILED, "no space left on device writing "
                                                           "somewhere", 5)
    assert not (job.dir / job_disk.RESERVE_FILE).exists()
    # with the reserve freed, the usual atomic write (a new file renamed over the old); without, the same file
    assert ((job.dir / "status.json").stat().st_ino == inode) is not reserve


# ------------------------------------------------------------------------------------------------
# Simulations: the write call raises ENOSPC (these run wherever the tests run)
# ------------------------------------------------------------------------------------------------
def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_simulated_full_disk_at_the_atomic_writer(tmp_path, monkeypatch):
    target = tmp_path / "table.json"
    target.write_text("old")
    monkeypatch.setattr(Path, "write_bytes", enospc)
    with pytest.raises(DiskFullError) as caught:
        write_bytes(target, b"x" * 1234)
    assert str(caught.value).startswith(f"no space left on device writing {target} (1.2 kB needed; ")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.json"]
    # a library that wraps the error keeps its text: still recognised
    assert is_disk_full(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_simulated_full_disk_at_import_via_the_cli(ws, tmp_path, monkeypatch, capsys):
    small = write_source(tmp_path / "small.jsonl", 30)
    assert cli.main(["import", str(small), "--name", "d", "--workspace", str(ws.root)]) == 0
    before = snapshot(ws.datasets_dir)
    monkeypatch.setattr(pa, "OSFile", enospc)  # what ingest writes pairs.arrow through
    capsys.readouterr()
    code = cli.main(["import", str(write_source(tmp_path / "other.jsonl", 40)), "--name", "d", "--replace",
                     "--workspace", str(ws.root)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: no space left on device writing under {ws.root}"), err
    assert snapshot(ws.datasets_dir) == before


def test_simulated_full_disk_in_a_job_worker(ws, tmp_path, monkeypatch):
    """run_worker in this process (so the patch reaches it): the failure is recorded with the message, and
    the last status write, itself refused, falls back to rewriting status.json in place."""
    job = jobs.Job(ws.jobs_dir / "import-simulated")
    job.dir.mkdir(parents=True)
    params = import_spec(write_source(tmp_path / "s.jsonl", 30), "d").to_params()
    write_json(job.dir / "spec.json", {"kind": "import", "params": params, "job_id": job.id})
    monkeypatch.setattr(pa, "OSFile", enospc)
    refused: list[int] = []  # the inode of status.json when its final write was refused

    def status_write(path, obj):
        refused.append(Path(path).stat().st_ino)
        enospc()

    monkeypatch.setattr(job_disk, "write_json", status_write)  # the final status write (core.job_disk)
    assert run_worker(job.dir) == 1
    status = job.status()
    assert status.state is JobState.FAILED, status
    assert status.message.startswith(f"no space left on device writing under {ws.root}"), status.message
    assert status.message.endswith("and try again")  # whole: it fitted in the status file's block
    assert len(refused) == 2 and (job.dir / "status.json").stat().st_ino == refused[0]  # rewritten in place
