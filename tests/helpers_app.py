"""Workspaces for the dashboard tests and bench: a real import (core.data.ingest) plus a policy score table
written with the real writer, including one adversarial pair whose texts try to run script and fetch
URLs (the page must show them as text)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from marginlens.core.data.ingest import import_dataset
from marginlens.core.scoring.score_tables import save_score_table
from marginlens.core.workspace import Workspace

DATASET = "prefs"
POLICY_FP = "logprob-test-policy"
XSS_PROMPT = "<script>window.__xss = 1</script> Which answer is safe?"


def xss_record(port: int) -> dict:
    """Texts that would fetch http://127.0.0.1:PORT/... if rendered as HTML or markdown."""
    base = f"http://127.0.0.1:{port}"
    return {
        "prompt": XSS_PROMPT,
        "chosen": f'<img src="{base}/img.png" onerror="window.__xss=2"> chosen <b>bold?</b>',
        "rejected": f"![tracker]({base}/md.png) and [a link]({base}/link) rejected",
        "score_chosen": 9.0,
        "score_rejected": 0.0,
    }


def records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sc, sr = rng.normal(5, 2), rng.normal(3, 2)
        out.append({"prompt": f"Question {i}: what is {i} plus {i}?\nSecond line {i}.",
                    "chosen": f"It is {2 * i}. " + "Because arithmetic. " * int(rng.integers(0, 4)),
                    "rejected": f"It is {2 * i + int(rng.integers(1, 9))}, I think.",
                    "score_chosen": round(float(sc), 3), "score_rejected": round(float(sr), 3)})
    return out


def build_workspace(root: Path, n: int = 200, seed: int = 0, canary_port: int = 9) -> Workspace:
    """Dataset DATASET with n ordinary pairs plus the adversarial one (last), and a logprob table in
    which the adversarial pair has the most negative implicit margin (the top noise suspect)."""
    ws = Workspace(root)
    source = root.parent / f"{root.name}-source.jsonl"
    rows = [*records(n, seed), xss_record(canary_port)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    import_dataset(source, DATASET, ws, replace=True)
    write_policy(ws, DATASET, seed)
    return ws


def write_policy(ws: Workspace, dataset: str, seed: int = 0, fingerprint: str = POLICY_FP) -> None:
    import pyarrow as pa

    table = ws.load_pairs(dataset).data.table
    ids = table.column("pair_id").to_pylist()
    n = len(ids)
    rng = np.random.default_rng(seed + 1)
    c_ntok = rng.integers(3, 40, n)
    r_ntok = rng.integers(3, 40, n)
    c_mean = rng.normal(-1.0, 0.4, n)
    r_mean = rng.normal(-1.2, 0.4, n)
    prompts = table.column("prompt").to_pylist()
    for i, prompt in enumerate(prompts):
        if prompt[-1]["content"] == XSS_PROMPT:
            c_mean[i], r_mean[i] = -6.0, -0.5  # the model strongly prefers the rejected answer
    save_score_table(ws, dataset, fingerprint, "logprob", pa.table({
        "pair_id": ids, "chosen_logp": c_mean * c_ntok, "chosen_ntok": c_ntok,
        "rejected_logp": r_mean * r_ntok, "rejected_ntok": r_ntok, "truncated": np.zeros(n, dtype=bool),
    }), model="test-policy", spec={"role": "policy"})


def app_test(page: str, ws: Workspace, timeout: float = 60):
    """An AppTest of one page file (Streamlit runs one page per AppTest) bound to `ws`."""
    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parent.parent
    at = AppTest.from_file(str(repo / "pages" / page), default_timeout=timeout)
    at.session_state["workspace"] = ws
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def no_errors(at) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def serve_config(monkeypatch, folder: Path, data_roots=(), endpoints=()) -> Path:
    """Pages under AppTest read what `marginlens app` was launched with from the file MARGINLENS_SERVE_CONFIG
    names (app.serve_config.load): data roots, and endpoints as (name, url, key or None)."""
    from marginlens.app.serve_config import CONFIG_ENV, Endpoint, ServeConfig

    config = ServeConfig(auth="none", data_roots=tuple(str(Path(r).resolve()) for r in data_roots),
                         endpoints=tuple(Endpoint(*e) for e in endpoints))
    path = Path(folder) / "serve.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json(), encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return path


def worker_environ(job, timeout: float = 60) -> dict[str, str]:
    """The environment the job's worker process runs with (Linux /proc), read while it is alive."""
    import time

    from marginlens.core.atomic import read_json

    deadline = time.monotonic() + timeout
    while True:
        pid = (read_json(job.dir / "status.json") or {}).get("pid")
        if pid:
            try:
                raw = Path(f"/proc/{pid}/environ").read_bytes()
            except FileNotFoundError:
                raw = b""
            if raw:
                return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
        assert time.monotonic() < deadline, job.log_tail(20)
        time.sleep(0.02)
