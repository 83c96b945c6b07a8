"""The Ray engine (`marginlens score --engine ray`), on real Ray: a local Ray of 2 CPUs, a simulated two-node
cluster losing a node mid-job, and a driver killed with SIGKILL then resumed.

Every job scores a sample of the built-in demo with SmolLM2-135M-Instruct in float32, which is what the demo's
shipped score table holds (scored by the local engine): the Ray engine's rows must match it to 1e-4 with
identical token counts. The shipped table is removed from each workspace first, so the job computes.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the Ray engine's extra is not installed: pip install 'marginlens[ray]'")

from marginlens.core.demo.build import ensure_demo  # noqa: E402
from marginlens.core.jobs import Job  # noqa: E402
from marginlens.core.scoring.ray_cluster import engine_env  # noqa: E402
from marginlens.core.scoring.score_spec import ScoreSpec  # noqa: E402
from marginlens.core.scoring.score_submit import submit_scoring  # noqa: E402
from marginlens.core.scoring.score_tables import load_score_table  # noqa: E402
from marginlens.core.workspace import Workspace  # noqa: E402
from tiny_models import single_thread, smollm2  # noqa: E402,F401

single_thread()
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # the clusters these tests start, and their jobs' local Rays

PAIRS = 12
# A small Ray: no dashboard, a small object store, results flushed to parts at once (the kill test needs some).
SMALL_RAY = {"MARGINLENS_RAY_DASHBOARD": "0", "MARGINLENS_RAY_OBJECT_STORE_MB": "100",
             "MARGINLENS_SCORE_FLUSH_SECONDS": "0", "MARGINLENS_RAY_BLOCK_PAIRS": "2", "HF_HUB_OFFLINE": "1"}
STORE = 100 * 2**20


def _demo(tmp: Path) -> tuple[Workspace, dict[str, dict[str, Any]]]:
    """A workspace with the demo and without its score table; the shipped table's rows by pair_id."""
    ws = Workspace(tmp / "ws")
    ensure_demo(ws)
    shipped: dict[str, dict[str, Any]] = {}
    for folder in [p for p in (ws.scores_dir / "demo").iterdir() if p.is_dir()]:
        shipped = {r["pair_id"]: r for r in load_score_table(ws, "demo", folder.name).to_pylist()}
        shutil.rmtree(folder)
    return ws, shipped


def _spec() -> ScoreSpec:
    return ScoreSpec("demo", dtype="float32", device="cpu", sample=PAIRS)


def _check_table(ws: Workspace, fingerprint: str, shipped: dict[str, dict[str, Any]]) -> None:
    rows = load_score_table(ws, "demo", fingerprint).to_pylist()
    ids = [r["pair_id"] for r in rows]
    assert len(ids) == len(set(ids)) == PAIRS  # every sampled pair, exactly once
    for row in rows:
        _same(row, shipped[row["pair_id"]])


def _same(row: dict[str, Any], local: dict[str, Any]) -> None:
    assert (row["chosen_ntok"], row["rejected_ntok"]) == (local["chosen_ntok"], local["rejected_ntok"])
    assert abs(row["chosen_logp"] - local["chosen_logp"]) <= 1e-4
    assert abs(row["rejected_logp"] - local["rejected_logp"]) <= 1e-4


def _parts_rows(job: Job, fingerprint: str) -> list[str]:
    import pyarrow.parquet as pq

    folder = job.dir / "results" / fingerprint
    return [pid for p in sorted(folder.glob("part-*.parquet")) for pid in pq.read_table(p).column("pair_id").to_pylist()]


def _wait_for(job: Job, ready, timeout: float = 400) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.status()
        assert status.live or status.state == "done", job.log_tail()
        if ready(status):
            return status.extra
        time.sleep(0.1)
    raise AssertionError(f"job never got there: {job.log_tail()}")


@pytest.mark.slow
def test_two_node_cluster_loses_a_node_mid_job(tmp_path, smollm2):  # noqa: F811
    """Two raylets of 1 CPU each; the second is removed once the first block is back: Ray restarts its actor
    and retries its block, and the job ends with every pair once and the local engine's numbers."""
    from ray.cluster_utils import Cluster

    ws, shipped = _demo(tmp_path)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE,
                                                            "include_dashboard": False})
    try:
        second = cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()
        env = {**engine_env("ray", address=cluster.address), **SMALL_RAY}
        handle = submit_scoring(ws, _spec(), env=env)
        first = _wait_for(handle.job, lambda s: (s.extra.get("blocks_done") or 0) >= 1)
        cluster.remove_node(second)  # its actor dies with whatever block it was scoring
        assert first["blocks_done"] < first["blocks_total"]  # removed mid-job
        status = handle.job.wait(timeout=400)
        assert status.state == "done", handle.job.log_tail()
        fingerprint = handle.fingerprints["policy"]
        _check_table(ws, fingerprint, shipped)
        parts = _parts_rows(handle.job, fingerprint)
        assert sorted(parts) == sorted(set(parts)) and len(parts) == PAIRS  # each pair written exactly once
        assert status.extra["ray_address"] == cluster.address
        assert status.extra["blocks_done"] >= status.extra["blocks_total"] == PAIRS // 2
        # the lost node's actor was restarted on the head: Ray's retry, counted for the job panel
        assert status.extra["actors_seen"] >= 2 and status.extra["actor_restarts"] >= 1, status.extra
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_local_ray_killed_driver_resumes_on_the_local_engine(tmp_path, smollm2):  # noqa: F811
    """A local Ray of 2 CPUs started for the job; its rows equal the local engine's; kill -9 of the driver
    (the job worker) leaves whole parts, and resubmitting without Ray finishes the same job from them."""
    ws, shipped = _demo(tmp_path)
    env = {**engine_env("ray"), **SMALL_RAY, "MARGINLENS_RAY_CPUS": "2", "MARGINLENS_RAY_BLOCK_PAIRS": "1"}
    handle = submit_scoring(ws, _spec(), env=env)
    job, fingerprint = handle.job, handle.fingerprints["policy"]
    folder = job.dir / "results" / fingerprint
    deadline = time.monotonic() + 400
    while len(list(folder.glob("part-*.parquet"))) < 3:  # a part per block (flushed at once)
        assert job.status().live and time.monotonic() < deadline, job.log_tail()
        time.sleep(0.05)
    pid = int(job._read_status()["pid"])
    os.kill(pid, signal.SIGKILL)
    _reap(pid)
    deadline = time.monotonic() + 60
    while (status := job.status()).live and time.monotonic() < deadline:  # until the kernel drops its lock
        time.sleep(0.1)
    assert status.state == "interrupted" and status.extra["engine"] == "ray"
    assert status.extra["ray_address"] == "local" and status.extra["blocks_total"] == PAIRS
    _panel_shows_ray(ws, status.extra)
    from marginlens.app import ray_fields

    assert ray_fields.resume_env(job)["MARGINLENS_SCORE_ENGINE"] == "ray"  # the panel's Resume: Ray again
    from_ray = load_parts(job, fingerprint)
    assert 3 <= len(from_ray) < PAIRS
    for pid_, row in from_ray.items():  # the Ray actors' rows are the local engine's numbers
        _same(row, shipped[pid_])
    again = submit_scoring(ws, _spec())  # the same job, resumed without Ray
    assert again.job.id == job.id
    status = again.job.wait(timeout=400)
    assert status.state == "done", job.log_tail()
    _check_table(ws, fingerprint, shipped)
    parts = _parts_rows(job, fingerprint)
    assert sorted(parts) == sorted(set(parts)) and len(parts) == PAIRS  # no pair written twice
    assert load_parts(job, fingerprint).keys() >= from_ray.keys()


def _panel_shows_ray(ws: Workspace, extra: dict[str, Any]) -> None:
    """The Score page's job panel draws the figures the driver recorded."""
    from helpers_app import app_test
    from marginlens.app.widgets import md_escape

    at = app_test("score_page.py", ws)
    at.run()
    line = f"Ray at {md_escape('local')} · blocks {extra['blocks_done']}/{PAIRS}"
    assert any(line in m.value for m in at.markdown), [m.value for m in at.markdown]


def load_parts(job: Job, fingerprint: str) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    folder = job.dir / "results" / fingerprint
    return {r["pair_id"]: r for p in sorted(folder.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()}


def _reap(pid: int) -> None:
    """The killed driver's local Ray (its session's processes), which nothing else will stop."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_score_page_engine_fields_are_for_operators_and_check_the_address(tmp_path, monkeypatch):
    from helpers_app import app_test, build_workspace, no_errors, serve_config
    from marginlens.app import ray_fields
    from marginlens.core import actor, jobs
    from marginlens.core.errors import MarginLensError

    ws = build_workspace(tmp_path / "workspace", n=12)
    serve_config(monkeypatch, tmp_path / "serve")
    at = app_test("score_page.py", ws)
    at.run()
    no_errors(at)
    at.radio(key=ray_fields.ENGINE_KEY).set_value("ray")
    for bad in ("head:6379; curl evil", "http://head:8265", "user:pw@head:6379"):
        at.text_input(key=ray_fields.ADDRESS_KEY).input(bad)
        next(b for b in at.button if b.label == "Start scoring").click().run()
        assert any("Ray address" in e.value for e in at.error), [e.value for e in at.error]
    assert not jobs.list_jobs(ws, "score")  # nothing started for a refused address
    assert ray_fields.engine_env({ray_fields.ENGINE_KEY: "ray", ray_fields.ADDRESS_KEY: "ray://head:10001",
                                  ray_fields.ACTORS_KEY: 3}) == {
        "MARGINLENS_SCORE_ENGINE": "ray", "MARGINLENS_RAY_DEVICE": "auto", "RAY_ADDRESS": "ray://head:10001",
        "MARGINLENS_RAY_ACTORS": "3"}
    # the form's Device reaches the actors: cpu keeps them off a cluster's GPUs
    assert ray_fields.engine_env({ray_fields.ENGINE_KEY: "ray"}, device="cpu")["MARGINLENS_RAY_DEVICE"] == "cpu"

    monkeypatch.setattr(actor, "_DEFAULT", actor.Actor("viewer", may_write=False))
    viewer = app_test("score_page.py", ws)
    viewer.run()
    assert not [r for r in viewer.radio if r.key == ray_fields.ENGINE_KEY]  # no engine fields for a viewer
    with pytest.raises(MarginLensError, match="operator"):
        ray_fields.engine_env({ray_fields.ENGINE_KEY: "ray"})


def test_panel_line_links_rays_dashboard_for_operators_only_when_it_answers():
    import http.server
    import threading

    from marginlens.app import ray_fields
    from marginlens.app.widgets import md_escape

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        extra = {"engine": "ray", "ray_address": "head:6379", "blocks_done": 3, "blocks_total": 12,
                 "actors_alive": 2, "actor_restarts": 1, "duplicate_pairs": 2, "ray_dashboard": url}
        line = ray_fields.ray_line(extra, operator=True)
        assert f"Ray at {md_escape('head:6379')}" in line and "blocks 3/12" in line and "actors alive 2" in line
        assert "actor restarts 1" in line and "computed twice by retries 2" in line
        assert f"[Ray dashboard]({url})" in line
        assert "Ray dashboard" not in ray_fields.ray_line(extra, operator=False)
    finally:
        server.shutdown()
        server.server_close()
    closed = {**extra, "ray_dashboard": url + "/gone"}  # nothing listens there now
    assert "Ray dashboard" not in ray_fields.ray_line(closed, operator=True)
    assert ray_fields.ray_line({"tokens_per_s": 5.0}, operator=True) is None  # a job on the local engine
