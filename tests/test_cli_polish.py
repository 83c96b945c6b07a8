"""Issue 23, CLI polish, as a user reads it (the CLI's main, real workspaces and a real import worker): `jobs`
lists under a header and says a state once, `jobs show` is a summary (`--json` the stored form), `--kind`
names every registered kind, `app --help` says what it starts and on which port, import skips bad rows by
default (as the dashboard does) and says how many and where, `train` defaults to DPO, and `select` says
where a relative --out went, absolutely."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers_data import make_dataset, random_logprobs, standard_records, write_jsonl
from marginlens.core import jobs
from marginlens.core.cli import main
from marginlens.core.data.import_job import ImportSpec
from tiny_models import tiny_llama  # noqa: F401  (session fixture)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


@pytest.fixture
def import_job(ws, tmp_path):
    """A finished import job, run by a real worker process."""
    source = write_jsonl(tmp_path / "src.jsonl", standard_records(6))
    spec = ImportSpec(source=str(source), requested_at=time.time(), name="d", format="auto", mapping={},
                      policy="skip", max_prompt_chars=None, allow_empty_responses=True, split=None, replace=False)
    job = jobs.submit(ws, "import", spec.to_params())
    assert job.wait(poll=0.1, timeout=120).state == "done", job.log_tail()
    return job


def test_jobs_lists_under_a_header_and_says_done_once(ws, import_job, capsys):
    code, out, _ = run(capsys, "jobs", "--workspace", str(ws.root))
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["job", "created", "started", "by", "state", "progress", "message"]
    assert row.startswith(import_job.id)
    assert row.split().count("done") == 1, row
    # the columns line up under their names
    assert row.index("done") == header.index("state")


def test_jobs_show_is_a_summary_and_json_is_the_stored_form(ws, import_job, capsys):
    code, out, _ = run(capsys, "jobs", "show", import_job.id, "--workspace", str(ws.root))
    assert code == 0
    assert not out.lstrip().startswith("{") and '"spec":' not in out
    lines = out.splitlines()
    assert lines[0] == f"job {import_job.id} (import)"
    assert lines[1].split() == ["state:", "done"]  # said once: the message "done" is not repeated
    assert "    name: d" in lines and "    policy: skip" in lines
    assert any(line.strip().startswith("d: imported 6 of 6 rows") for line in lines)  # the result's summary
    assert any(line.startswith("log (last 15 lines of ") for line in lines)
    assert f"marginlens jobs show {import_job.id} --json" in out
    assert any(line.startswith("disk: ") for line in lines)

    code, out, _ = run(capsys, "jobs", "show", import_job.id, "--json", "--workspace", str(ws.root))
    assert code == 0
    stored = json.loads(out)  # nothing but the JSON on stdout
    assert stored["spec"]["kind"] == "import" and stored["status"]["state"] == "done"
    assert stored["result"] == import_job.result()


def test_jobs_kind_takes_every_registered_kind(ws, capsys):
    text = help_text(capsys, "jobs")
    kinds = text.split("only jobs of this kind: ")[1]
    for kind in jobs.KINDS:
        assert kind in kinds, kind
    assert "experiment" in kinds and "selfplay" in kinds
    code, out, _ = run(capsys, "jobs", "--kind", "selfplay", "--workspace", str(ws.root))
    assert code == 0 and out.startswith("no jobs in") and "of kind selfplay" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["jobs", "--kind", "scorer", "--workspace", str(ws.root)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'scorer'" in capsys.readouterr().err


def test_app_help_says_what_it_starts_and_the_port(capsys):
    text = help_text(capsys, "app")
    assert "Start the MarginLens dashboard, a web app" in text
    assert "--port PORT port to serve on (default 8501)" in text


def test_import_skips_bad_rows_by_default_and_says_where(ws, tmp_path, capsys):
    rows = standard_records(5)
    rows[2] = {**rows[2], "rejected": rows[2]["chosen"]}  # identical responses: a bad row
    del rows[3]["chosen"]  # a missing field: another
    source = write_jsonl(tmp_path / "bad.jsonl", rows)
    code, out, err = run(capsys, "import", str(source), "--name", "d", "--workspace", str(ws.root))
    assert code == 0, err
    rejects = ws.rejects_path("d")
    assert rejects.exists() and len(rejects.read_text().splitlines()) == 2
    assert f"2 bad rows skipped, written with their row, field and reason to {rejects}" in out
    assert "d: imported 3 of 5 rows" in out
    assert len(ws.load_pairs("d")) == 3

    code, _, err = run(capsys, "import", str(source), "--name", "s", "--policy", "strict", "--workspace", str(ws.root))
    assert code == 2 and "s" not in ws.dataset_names()
    assert "row 3" in err or "line 3" in err, err
    assert "skip (default)" in help_text(capsys, "import")


def test_train_defaults_to_dpo(tmp_path, tiny_llama, capsys):  # noqa: F811
    data = write_jsonl(tmp_path / "export.jsonl", [
        {"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"Maybe {3 * i + 1}."}
        for i in range(4)])
    code, out, err = run(capsys, "train", str(data), "--workspace", str(tmp_path / "ws"), "--model", str(tiny_llama),
                         "--device", "cpu", "--dry-run")
    assert code == 0, err
    assert '"method": "dpo"' in out and '"preset": "dpo-paper"' in out
    assert "else dpo, as on the dashboard's Train page" in help_text(capsys, "train")
    # a SimPO preset without --method trains with SimPO, as the preset says
    code, out, err = run(capsys, "train", str(data), "--workspace", str(tmp_path / "ws"), "--model", str(tiny_llama),
                         "--device", "cpu", "--preset", "simpo-llama3-8b-instruct", "--dry-run")
    assert code == 0, err
    assert '"method": "simpo"' in out
    code, _, err = run(capsys, "train", "--workspace", str(tmp_path / "ws"))
    assert code == 2 and "train needs an EXPORT path" in err and "--method" not in err


def test_select_says_a_relative_out_went_under_exports_with_the_absolute_path(ws, tmp_path, capsys, monkeypatch):
    make_dataset(ws, "d", standard_records(20), tmp_path)
    random_logprobs(ws, "d")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "select", "d", "--out", "x.parquet", "--workspace", str(ws.root))
    assert code == 0, err
    written = ws.exports_dir.resolve() / "x.parquet"
    assert written.exists() and not (tmp_path / "x.parquet").exists()
    first, second = out.splitlines()[:2]
    assert first.endswith(f"wrote {written}") and Path(first.rsplit(" ", 1)[1]).is_absolute()
    assert "--out x.parquet is relative, so it went under the workspace's exports/ folder" in second
    assert str(ws.exports_dir.resolve()) in second


def test_audit_report_says_why_there_is_no_agreement(tmp_path, capsys):
    from helpers_app import DATASET, build_workspace
    from judge_server import ScriptedJudge
    from marginlens.core.audit.audit_job import submit_audit
    from marginlens.core.audit.audit_params import audit_params
    from marginlens.core.chat_client import Endpoint

    ws = build_workspace(tmp_path / "workspace", n=10)
    ids = list(ws.load_pairs(DATASET)["pair_id"])[:2]
    with ScriptedJudge(answer=lambda request: json.dumps({"winner": "B"})) as judge:  # by position: B, always
        params = audit_params(DATASET, {"random": ids}, Endpoint("judge-b", judge.base_url, timeout=10))
        job = submit_audit(ws, params)
        assert job.wait(poll=0.1, timeout=120).state == "done", job.log_tail()
    code, out, err = run(capsys, "audit-report", job.id, "--workspace", str(ws.root))
    assert code == 0, err
    assert "No decisive pair, so the judge's agreement with the labels cannot be measured" in out
    assert "in each of the 2 pairs answered in both orders" in out
