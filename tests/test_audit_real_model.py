"""End to end against a real model: `transformers serve` (the transformers[serving] extra) serving
SmolLM2-135M-Instruct on 127.0.0.1. A 135M model is a poor judge: the test checks the plumbing (verdicts
arrive, are parsed or recorded as invalid with their raw text, the report is produced), not its taste."""

from __future__ import annotations

import pytest
from helpers_data import make_dataset, standard_records
from helpers_serve import transformers_serve
from marginlens.core.audit.audit_job import submit_audit
from marginlens.core.audit.audit_params import audit_params
from marginlens.core.audit.audit_report import audit_report
from marginlens.core.chat_client import Endpoint, RetryPolicy
from marginlens.core.scoring.models import smollm2_folder
from marginlens.core.verdicts import VerdictStore

KEY = "sk-real-model-test-KEY-91c0"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory):
    """`transformers serve` pinned to the SmolLM2 safetensors folder (core.scoring.models converts it once)."""
    folder = smollm2_folder()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with transformers_serve(folder, log) as base_url:
        yield base_url, str(folder), log


def test_audit_against_smollm2_behind_transformers_serve(smollm2_server, ws, tmp_path):
    base_url, model, log = smollm2_server
    # One pair, judged in both orders: on two shared CPU cores each 8-token answer takes 5-60 s.
    make_dataset(ws, "real", standard_records(1, seed=5), tmp_path)
    ids = list(ws.load_pairs("real")["pair_id"])
    # The server is pinned to one model and answers only to its name: the folder path.
    endpoint = Endpoint(model, base_url, timeout=180, max_output_tokens=8)
    params = audit_params("real", {"random": ids}, endpoint, concurrency=1,
                          retry=RetryPolicy(max_attempts=2, base_delay=1))
    job = submit_audit(ws, params, api_key=KEY)
    status = job.wait(timeout=420)
    assert status.state == "done", job.log_tail()

    records = VerdictStore.for_dataset(ws, "real").records()
    assert len(records) == 2 and {r["order"] for r in records} == {"AB", "BA"}
    for record in records:
        assert record["completion_tokens"] > 0 and record["raw"] is not None
        if record["valid"]:
            assert record["choice"] in ("A", "B") and record["prefers"] in ("chosen", "rejected")
        else:
            assert record["choice"] is None and record["invalid_reason"] and record["raw"].strip()
    report = audit_report(ws, params)
    overall = report["overall"]
    assert overall["judged"] == 1 and overall["pending"] == 0
    assert overall["invalid"] == sum(not r["valid"] for r in records)
    assert job.result()["report"] == report
    leaked = [p for p in ws.root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == [] and KEY not in log.read_text()
