"""Children hosted in their parent's process (core.job_host): the same job folder, status, log and outcome as a
spawned worker, the parent's pid, and its own log. Each case runs in a fresh interpreter, because hosting is
switched on for a whole process (as in a parent job's worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from marginlens.core import job_host, jobs
    from marginlens.core.job_worker import run_worker
    from marginlens.core.data.import_job import import_spec
    from marginlens.core.workspace import Workspace

    if sys.argv[3] != "spawned":
        job_host.enable(run_worker)
        # the mechanism is the same for every kind: a cheap one stands in for train and evaluate here
        job_host.HOSTED_KINDS = frozenset({"import"})
    print("parent line", flush=True)
    ws = Workspace(Path(sys.argv[1]))
    env = {"MARGINLENS_TEST_SECRET": "key-for-this-child"} if sys.argv[3] == "with-secret" else None
    job = jobs.submit(ws, "import", import_spec(sys.argv[2], "tiny", policy="strict").to_params(), env=env)
    status = job.wait(poll=0.05, timeout=120)
    print(json.dumps({"pid": os.getpid(), "state": status.state.value, "job_pid": status.pid, "dir": str(job.dir),
                      "message": status.message, "secret_here": os.environ.get("MARGINLENS_TEST_SECRET")}))
""")


def _run(tmp_path: Path, rows: list[str], mode: str) -> tuple[dict, str]:
    data = tmp_path / f"{mode}.jsonl"
    data.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"ws-{mode}"), str(data), mode],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "MARGINLENS_CHILD_PROCESSES": ""})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


GOOD = [json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) for i in range(5)]


def test_a_hosted_child_runs_in_the_parents_process_with_its_own_log(tmp_path):
    hosted, parent_out = _run(tmp_path, GOOD, "hosted")
    spawned, _ = _run(tmp_path, GOOD, "spawned")
    assert hosted["state"] == spawned["state"] == "done"
    assert hosted["job_pid"] == hosted["pid"]  # no process of its own
    assert spawned["job_pid"] != spawned["pid"]
    hosted_log = (Path(hosted["dir"]) / "log.txt").read_text()
    assert "importing" in hosted_log and "parent line" not in hosted_log
    assert "importing" not in parent_out  # the child's lines went to its log, not to the parent's output
    for result in (hosted, spawned):
        assert json.loads((Path(result["dir"]) / "result.json").read_text())["imported"] == 5


def test_a_hosted_child_that_fails_records_its_error_and_traceback_in_its_own_log(tmp_path):
    hosted, parent_out = _run(tmp_path, [*GOOD, "{not json"], "hosted")
    assert hosted["state"] == "failed"
    assert "line 6" in hosted["message"]
    log = (Path(hosted["dir"]) / "log.txt").read_text()
    assert "Traceback" in log and "Traceback" not in parent_out


def test_a_child_given_secrets_is_spawned_so_no_key_stays_in_the_parents_environment(tmp_path):
    result, _ = _run(tmp_path, GOOD, "with-secret")
    assert result["state"] == "done"
    assert result["job_pid"] != result["pid"] and result["secret_here"] is None
