"""A small scored dataset for the experiments lab's tests, and a throwaway verifier that job workers see too.

Job workers are separate processes: a verifier registered only in the test process would be unknown
there. `register_test_verifier` writes a module that registers it on import and names it in
$MARGINLENS_VERIFIER_MODULES (core.experiments.verifiers.PLUGINS_ENV), on a PYTHONPATH entry; the job
workers this process starts inherit both.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from helpers_app import POLICY_FP, write_policy
from marginlens.core import jobs
from marginlens.core.atomic import read_json, write_json
from marginlens.core.data.ingest import import_dataset
from marginlens.core.experiments import verifiers
from marginlens.core.workspace import Workspace

DATASET = "arith"
VERIFIER = "exp-test-digits"
_MODULE = "exp_test_verifier"

# A deterministic score of any response: the share of its characters that are digits, rounded so that
# float formatting cannot differ between processes.
_PLUGIN = f'''
from marginlens.core.experiments.verifiers import Verifier, register_verifier


def _digits(response, row):
    return round(sum(ch.isdigit() for ch in response) / max(1, len(response)), 6)


register_verifier(Verifier({VERIFIER!r}, "1", "share of digit characters (test only)", _digits, needs=()))
'''
_SAVED: dict[str, str | None] = {}


def register_test_verifier(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{_MODULE}.py").write_text(_PLUGIN, encoding="utf-8")
    for name in ("PYTHONPATH", verifiers.PLUGINS_ENV):
        _SAVED[name] = os.environ.get(name)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), _SAVED["PYTHONPATH"]) if p)
    os.environ[verifiers.PLUGINS_ENV] = _MODULE
    sys.path.insert(0, str(folder))
    importlib.import_module(_MODULE)


def unregister_test_verifier(folder: Path) -> None:
    verifiers._REGISTRY.pop(VERIFIER, None)
    sys.modules.pop(_MODULE, None)
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    for name, value in _SAVED.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def arithmetic_records(n: int = 20) -> list[dict]:
    """n questions with checkable answers; some share a prompt (two pairs for one question)."""
    rows = []
    for i in range(n):
        q = i % (n - 3) if n > 3 else i  # the last three repeat earlier questions: prompts with two pairs
        rows.append({"prompt": f"What is {q} plus {q + 1}?", "chosen": f"It is {2 * q + 1}." + " Sure." * (i % 3),
                     "rejected": f"Maybe {q + 7}, or {i}.", "score_chosen": float(1 + (i * 7) % 5),
                     "score_rejected": float((i * 3) % 4), "answer": str(2 * q + 1), "task": "arithmetic"})
    return rows


def build_dataset(root: Path, n: int = 20, policy: str | None = None) -> Workspace:
    """Dataset DATASET (explicit scores from the records, an implicit margin from a written policy table,
    recorded as scored with `policy` when given: the experiment takes the table of its starting model)."""
    ws = Workspace(root)
    source = root.parent / f"{root.name}-arith.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_records(n)), encoding="utf-8")
    import_dataset(source, DATASET, ws, replace=True)
    write_policy(ws, DATASET)
    if policy is not None:
        stamp_policy(ws, policy)
    return ws


def stamp_policy(ws: Workspace, policy: str, fingerprint: str = POLICY_FP) -> None:
    """Record the written policy table as scored with `policy`, as a score job's manifest would."""
    from marginlens.core.scoring.models import canonical_spec, model_identity, resolve_model

    path = ws.scores_dir / DATASET / fingerprint / "manifest.json"
    manifest = read_json(path)
    model = canonical_spec(policy)
    identity = model_identity(policy) if resolve_model(policy).is_local else f"rev:{policy}"
    manifest["model"] = model
    manifest["spec"] = {**manifest.get("spec", {}), "model": model, "identity": identity}
    write_json(path, manifest)


def kill_job(job: jobs.Job) -> None:
    """SIGKILL a job's worker (once it has written its pid) and wait until it is gone."""
    deadline = time.monotonic() + 30
    # a worker just started is alive before it writes its pid
    while (pid := (read_json(job.dir / "status.json") or {}).get("pid")) is None and job.is_alive():
        assert time.monotonic() < deadline, f"{job.id} never wrote its pid"
        time.sleep(0.05)
    if pid is None:
        return
    os.kill(int(pid), signal.SIGKILL)
    while job.is_alive():
        assert time.monotonic() < deadline, f"{job.id} still alive after SIGKILL"
        time.sleep(0.1)
