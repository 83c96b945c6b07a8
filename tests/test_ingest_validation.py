"""Bad input: every bad row is named (row/line, field, reason); nothing is dropped silently."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from marginlens.core.data.ingest import import_dataset
from marginlens.core.errors import MarginLensError, NotADatasetError, RowError

OK = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}


def jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# (record or raw line, field, reason) -- each is row 1 (line 2) after one good row
BAD_ROWS = [
    ('{"prompt": "Q?", "chosen": "yes", ', "<json>", "malformed_json"),
    ({"prompt": "Q?", "chosen": "yes"}, "rejected", "missing_column"),
    ({"prompt": "Q?", "chosen": 42, "rejected": "no"}, "chosen", "bad_type"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "empty_content"),
    ({"prompt": "Q?", "chosen": "same", "rejected": "same"}, "rejected", "identical_responses"),
    ({**OK, "score_chosen": float("nan"), "score_rejected": 1.0}, "score_chosen", "bad_score"),
    ({**OK, "score_chosen": 1.0, "score_rejected": "high"}, "score_rejected", "bad_score"),
    ({**OK, "score_chosen": 1.0, "score_rejected": float("inf")}, "score_rejected", "bad_score"),
    (OK, "pair", "duplicate_pair"),
]


@pytest.mark.parametrize("bad,field,reason", BAD_ROWS, ids=[r for _, _, r in BAD_ROWS])
def test_strict_stops_at_first_bad_row_with_line_field_reason(ws, tmp_path, bad, field, reason):
    first = {**OK, "score_chosen": 2.0, "score_rejected": 1.0} if isinstance(bad, dict) and "score_chosen" in bad else OK
    src = jsonl(tmp_path / "bad.jsonl", [first, bad, {**OK, "prompt": "later"}])
    with pytest.raises(RowError) as info:
        import_dataset(src, "bad", ws, policy="strict")
    err = info.value
    assert (err.row, err.line, err.field, err.reason) == (1, 2, field, reason)
    assert "bad.jsonl: line 2" in str(err) and reason in str(err)
    assert not ws.has_dataset("bad")  # strict writes nothing


def test_skip_policy_imports_the_rest_counts_reasons_and_writes_every_reject(ws, tmp_path):
    lines = [OK] + [bad for bad, _, _ in BAD_ROWS] + [{**OK, "prompt": "last"}]
    # score columns make every row need scores: keep that case out of this mixed file
    lines = [line for line in lines if not (isinstance(line, dict) and "score_chosen" in line)]
    src = jsonl(tmp_path / "mixed.jsonl", lines)
    report = import_dataset(src, "mixed", ws, policy="skip")
    assert report.imported == 2 and report.rows_read == len(lines)
    expected = {"malformed_json": 1, "missing_column": 1, "bad_type": 1, "empty_content": 1,
                "identical_responses": 1, "duplicate_pair": 1}
    assert report.rejected == expected
    assert sum(expected.values()) + report.imported == report.rows_read  # nothing lost
    rejects = [json.loads(line) for line in report.rejects_path.read_text().splitlines()]
    assert report.rejects_path.parent.parent == ws.dataset_dir("mixed")  # inside the data folder
    assert [r["line"] for r in rejects] == list(range(2, 2 + len(rejects)))
    assert rejects[0]["record"].startswith('{"prompt": "Q?"')  # the undecodable line itself is kept
    assert rejects[1]["record"] == {"prompt": "Q?", "chosen": "yes"}
    assert "skipped      1  empty_content" in report.summary()


def test_prompt_length_limit(ws, tmp_path):
    src = jsonl(tmp_path / "long.jsonl", [OK, {**OK, "prompt": "x" * 500}])
    report = import_dataset(src, "long", ws, policy="skip", max_prompt_chars=100)
    assert report.rejected == {"prompt_too_long": 1}


def test_conversation_errors(ws, tmp_path):
    user = {"role": "user", "content": "Q?"}
    rows = [
        {"chosen": [user, {"role": "assistant", "content": "a"}], "rejected": [user, {"role": "assistant", "content": "b"}]},
        # no shared prefix
        {"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
        # last turn is the user's
        {"chosen": [user, {"role": "assistant", "content": "a"}, user], "rejected": [user, {"role": "assistant", "content": "b"}, user]},
        # content is not a string
        {"chosen": [user, {"role": "assistant", "content": ["a"]}], "rejected": [user, {"role": "assistant", "content": "b"}]},
    ]
    report = import_dataset(jsonl(tmp_path / "conv.jsonl", rows), "conv", ws, policy="skip")
    rejects = [json.loads(line) for line in report.rejects_path.read_text().splitlines()]
    assert [(r["line"], r["field"], r["reason"]) for r in rejects] == [
        (2, "prompt", "no_shared_prefix"),
        (3, "chosen", "last_turn_not_assistant"),
        (4, "chosen[1].content", "bad_type"),
    ]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.jsonl", b"", "empty"),
        ("blank.jsonl", b"\n\n  \n", "empty"),
        ("binary.jsonl", bytes(range(256)) * 4, "binary"),
        ("data.xlsx", b"PK\x03\x04 not a dataset", "unsupported file type"),
        ("fake.parquet", b"this is not parquet", "not a readable Parquet"),
        ("broken.json", b'[{"prompt": "a",', "malformed JSON at line 1"),
        ("scalar.json", b"42", "expected a JSON list"),
    ],
)
def test_not_a_dataset_gets_one_clear_message(ws, tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(NotADatasetError, match=message):
        import_dataset(tmp_path / name, "x", ws)


def test_missing_source_and_folder_that_is_not_a_dataset(ws, tmp_path):
    with pytest.raises(NotADatasetError, match="no such file"):
        import_dataset(tmp_path / "nope.jsonl", "x", ws)
    (tmp_path / "folder").mkdir()
    with pytest.raises(NotADatasetError, match="not a datasets save_to_disk folder"):
        import_dataset(tmp_path / "folder", "x", ws)


def test_all_rows_bad_is_an_error_not_an_empty_dataset(ws, tmp_path):
    with pytest.raises(MarginLensError, match="none of the 2 rows"):
        import_dataset(jsonl(tmp_path / "x.jsonl", ['{"a": 1}', '{"b": 2}']), "x", ws, policy="skip")
    assert not ws.has_dataset("x")


def test_crash_mid_write_leaves_previous_dataset_intact(ws, tmp_path):
    """A real crash: a child process dies (SIGKILL-like os._exit) while the new table is half written."""
    good = jsonl(tmp_path / "good.jsonl", [{**OK, "prompt": f"q{i}"} for i in range(5)])
    import_dataset(good, "d", ws)
    before = ws.load_pairs("d")["pair_id"]
    big = jsonl(tmp_path / "big.jsonl", [{**OK, "prompt": f"p{i}"} for i in range(5000)])
    code = f"""
import os, pyarrow as pa
real = pa.ipc.RecordBatchStreamWriter.write_batch
def dying(self, batch):
    real(self, batch)
    os._exit(9)  # die after the first batch reached the file
pa.ipc.RecordBatchStreamWriter.write_batch = dying
from marginlens.core.data.ingest import import_dataset
from marginlens.core.workspace import Workspace
import_dataset({str(big)!r}, "d", Workspace({str(ws.root)!r}), replace=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], env={**os.environ})
    assert proc.returncode == 9
    assert ws.load_pairs("d")["pair_id"] == before
    assert ws.dataset_manifest("d")["rows"]["imported"] == 5
    # the next import cleans up and succeeds
    assert import_dataset(big, "d", ws, replace=True).imported == 5000
    assert not list(ws.dataset_dir("d").glob(".import-*"))


def test_score_values_are_parsed_not_trusted(ws, tmp_path):
    src = jsonl(tmp_path / "s.jsonl", [{**OK, "score_chosen": "3.5", "score_rejected": 1}])
    import_dataset(src, "s", ws)
    row = ws.load_pairs("s")[0]
    assert row["score_chosen"] == 3.5 and row["score_rejected"] == 1.0 and not math.isnan(row["score_chosen"])


def test_hub_id_offline_is_a_clear_error(ws, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NotADatasetError, match="looks like a Hub id, but HF_HUB_OFFLINE=1"):
        import_dataset("trl-lib/ultrafeedback_binarized", "hub", ws)


def test_a_failed_reimport_leaves_the_previous_rejects_with_the_previous_pairs(ws, tmp_path):
    first = jsonl(tmp_path / "a.jsonl", [OK, {"prompt": "Q?", "chosen": "same", "rejected": "same"}])
    import_dataset(first, "d", ws, policy="skip")
    rejects_before = ws.rejects_path("d").read_text()
    second = jsonl(tmp_path / "b.jsonl", [{**OK, "prompt": "new"}, '{"broken'])
    with pytest.raises(RowError):
        import_dataset(second, "d", ws, policy="strict", replace=True)
    assert ws.rejects_path("d").read_text() == rejects_before
    assert ws.load_pairs("d")["prompt"] == [[{"role": "user", "content": "Q?"}]]
    assert sorted(p.name for p in ws.dataset_dir("d").iterdir() if not p.name.startswith(".import.lock")) == [
        ws.dataset_manifest("d")["data"], "manifest.json"]
