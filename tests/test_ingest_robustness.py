"""Import robustness (issue 11, part 1): empty responses kept and flagged, errors that name the option
that lets a row in, byte-order marks, CRLF line ends and lines in another encoding."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from marginlens.core.data.ingest import import_dataset
from marginlens.core.errors import RowError

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
OK = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}
EMPTY = {"prompt": "How do I pick a lock?", "chosen": "", "rejected": "Here is how."}


def lines(*records: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def test_empty_responses_are_kept_flagged_and_counted_by_default(ws, tmp_path):
    src = tmp_path / "e.jsonl"
    src.write_bytes(lines(OK, EMPTY))
    report = import_dataset(src, "e", ws)
    assert report.imported == 2 and not report.rejected
    assert report.flagged == {"empty_response": 1}
    assert "kept         1  flagged empty_response" in report.summary()
    assert ws.dataset_manifest("e")["flagged"] == {"empty_response": 1}
    assert ws.load_pairs("e")["flags"] == [[], ["empty_response"]]


def test_rejecting_empty_responses_strict_error_names_the_option(ws, tmp_path):
    src = tmp_path / "e.jsonl"
    src.write_bytes(lines(OK, EMPTY))
    with pytest.raises(RowError) as info:
        import_dataset(src, "e", ws, allow_empty_responses=False)
    assert (info.value.line, info.value.field, info.value.reason) == (2, "chosen", "empty_content")
    assert "--empty-responses keep" in str(info.value) and "--policy skip" in str(info.value)
    report = import_dataset(src, "e", ws, allow_empty_responses=False, policy="skip")
    assert report.rejected == {"empty_content": 1} and report.imported == 1


def test_prompt_limit_error_names_its_option(ws, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_bytes(lines(OK, {**OK, "prompt": "x" * 50}))
    with pytest.raises(RowError, match="--max-prompt-chars"):
        import_dataset(src, "p", ws, max_prompt_chars=10)


@pytest.mark.parametrize("gz", [False, True])
def test_byte_order_mark_and_crlf_line_ends_are_accepted(ws, tmp_path, gz):
    body = b"\xef\xbb\xbf" + lines(OK, {**OK, "prompt": "Q2?"}).replace(b"\n", b"\r\n")
    src = tmp_path / ("bom.jsonl.gz" if gz else "bom.jsonl")
    src.write_bytes(gzip.compress(body) if gz else body)
    report = import_dataset(src, "bom", ws)
    assert report.imported == 2 and not report.rejected
    assert ws.load_pairs("bom")["prompt"][1] == [{"role": "user", "content": "Q2?"}]


def test_csv_with_byte_order_mark_reads_its_first_column(ws, tmp_path):
    src = tmp_path / "bom.csv"
    src.write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\r\nQ?,yes,no\r\n")
    assert import_dataset(src, "c", ws).imported == 1


def _latin1_file(tmp_path: Path) -> tuple[Path, bytes]:
    bad = json.dumps({**OK, "prompt": "caf\u00e9?"}, ensure_ascii=False).encode("latin-1")
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(lines(OK) + bad + b"\n" + lines({**OK, "prompt": "\u00fcber?"}))
    return src, bad


def test_a_line_in_another_encoding_is_a_row_level_reject_under_skip(ws, tmp_path):
    src, bad = _latin1_file(tmp_path)
    report = import_dataset(src, "m", ws, policy="skip")
    assert report.imported == 2 and report.rejected == {"bad_encoding": 1}
    [reject] = [json.loads(line) for line in report.rejects_path.read_text().splitlines()]
    assert (reject["line"], reject["row"], reject["reason"]) == (2, 1, "bad_encoding")
    assert base64.b64decode(reject["raw_base64"]) == bad  # the exact bytes are kept


def test_a_line_in_another_encoding_stops_strict_naming_the_line(ws, tmp_path):
    src, _ = _latin1_file(tmp_path)
    with pytest.raises(RowError, match=r"mixed.jsonl: line 2, field '<line>': bad_encoding: not UTF-8"):
        import_dataset(src, "m", ws)
    assert not ws.has_dataset("m")


@pytest.mark.skipif(not HH.exists(), reason=f"{HH} is absent (a clone without ../shared)")
def test_hh_imports_with_the_default_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "marginlens.core.cli", "import", str(HH), "--name", "hh",
                             "--workspace", str(tmp_path / "ws")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "imported 2,312 of 2,312 rows as hh-rlhf" in result.stdout
    assert "kept         4  flagged empty_response" in result.stdout
