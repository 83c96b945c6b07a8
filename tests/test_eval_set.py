"""Eval sets: reading, checking, fingerprinting and writing held-out prompts."""

from __future__ import annotations

import gzip
import json

import pytest
from marginlens.core.errors import MarginLensError
from marginlens.core.experiments.eval_set import eval_set_fingerprint, load_eval_set, write_eval_set


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_rows_ids_and_optional_fields(tmp_path):
    path = write_lines(tmp_path / "e.jsonl", [
        json.dumps({"prompt": "2+3?", "answer": "5", "task": "arithmetic"}),
        "",
        json.dumps({"prompt": "Capital of France?", "answer": "Paris", "id": "fr"}),
        json.dumps({"prompt": "7 km in m?", "answer": 7000, "id": 12, "extra": "ignored"}),
    ])
    assert load_eval_set(path) == [
        {"prompt": "2+3?", "answer": "5", "task": "arithmetic", "id": "1"},  # the line number
        {"prompt": "Capital of France?", "answer": "Paris", "id": "fr"},
        {"prompt": "7 km in m?", "answer": "7000", "id": "12"},  # numbers kept as their text
    ]


@pytest.mark.parametrize(("lines", "message"), [
    (['{"prompt": "a"}', '{"prompt": "b", "id": "1"}'], r"line 2, field 'id': duplicate id '1' \(first on line 1\)"),
    (['{"prompt": "a"}', '{"prompt": '], r"line 2, field 'prompt': not valid JSON"),
    (['{"answer": "5"}'], r"line 1, field 'prompt': missing or empty"),
    (['{"prompt": "   "}'], r"line 1, field 'prompt': missing or empty"),
    (['{"prompt": ["user", "hi"]}'], r"line 1, field 'prompt': expected a string"),
    (['{"prompt": "a", "answer": {"x": 1}}'], r"line 1, field 'answer': expected a string"),
    (['{"prompt": "a", "id": true}'], r"line 1, field 'id': expected a non-empty string or integer"),
    (['["a", "b"]'], r"line 1, field 'prompt': expected a JSON object"),
    ([""], r"no rows"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, lines, message):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(MarginLensError, match=message) as info:
        load_eval_set(path)
    assert str(path) in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(MarginLensError, match="no such file"):
        load_eval_set(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MarginLensError, match="cannot read it as gzipped UTF-8 JSONL"):
        load_eval_set(tmp_path / "bad.jsonl.gz")


def test_write_round_trip_and_fingerprint_follows_content(tmp_path):
    rows = [{"prompt": "2+3?", "answer": "5", "task": "arithmetic", "id": "a"}, {"prompt": "Hi ünï"}]
    plain, packed = tmp_path / "e.jsonl", tmp_path / "e.jsonl.gz"
    write_eval_set(plain, rows)
    write_eval_set(packed, rows)
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()  # gzip only when the name says so
    assert load_eval_set(plain) == load_eval_set(packed) == [rows[0], {"prompt": "Hi ünï", "id": "2"}]
    fingerprint = eval_set_fingerprint(plain)
    assert fingerprint.startswith("sha256:") and eval_set_fingerprint(packed) == fingerprint
    # Same rows, other formatting: the same eval set. Another answer: another one.
    write_lines(tmp_path / "spaced.jsonl", [json.dumps(load_eval_set(plain)[0], indent=None, separators=(", ", ": ")),
                                            json.dumps({"id": "2", "prompt": "Hi ünï"})])
    assert eval_set_fingerprint(tmp_path / "spaced.jsonl") == fingerprint
    write_eval_set(tmp_path / "other.jsonl", [{**rows[0], "answer": "6"}, rows[1]])
    assert eval_set_fingerprint(tmp_path / "other.jsonl") != fingerprint


def test_write_refuses_what_would_not_load_back(tmp_path):
    target = tmp_path / "e.jsonl"
    with pytest.raises(MarginLensError, match="duplicate id 'x'"):
        write_eval_set(target, [{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}])
    with pytest.raises(MarginLensError, match="field 'prompt'"):
        write_eval_set(target, [{"prompt": ""}])
    assert not target.exists()  # nothing half-written
