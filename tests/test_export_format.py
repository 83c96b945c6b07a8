"""Issue 12, point 3: the --out extension decides the export format unless --format says otherwise, and a
contradiction between the two is an error (a `.parquet` file never holds JSON lines)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from helpers_data import make_dataset, random_logprobs, standard_records
from marginlens.core.cli import main
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.export import format_for


@pytest.fixture
def root(ws, tmp_path) -> str:
    make_dataset(ws, "std", standard_records(20), tmp_path)
    random_logprobs(ws, "std")
    return str(ws.root)


def test_cli_out_extension_decides_the_format(ws, root, capsys):
    base = ["select", "std", "--workspace", root, "--metric", "implicit", "--ratio", "0.5"]
    assert main([*base, "--out", "cut.parquet"]) == 0
    table = pq.read_table(ws.exports_dir / "cut.parquet")  # real Parquet, not JSON lines
    assert table.num_rows == 10
    manifest = json.loads((ws.exports_dir / "cut.parquet.manifest.json").read_text())
    assert manifest["output"]["format"] == "parquet"
    assert main([*base, "--out", "folder"]) == 0  # no extension: a save_to_disk folder
    assert (ws.exports_dir / "folder" / "marginlens_manifest.json").is_file()
    capsys.readouterr()
    assert main([*base, "--out", "wrong.parquet", "--format", "jsonl"]) == 2
    err = capsys.readouterr().err
    assert "'wrong.parquet' has the extension of parquet, but the format asked is jsonl" in err
    assert not (ws.exports_dir / "wrong.parquet").exists()
    assert main([*base, "--out", "table.csv"]) == 2
    assert "cannot tell the export format of 'table.csv'" in capsys.readouterr().err
    assert main([*base, "--out", "table.csv", "--format", "jsonl"]) == 0  # an explicit format decides


def test_format_for_agrees_with_matching_names():
    assert [format_for("a.jsonl"), format_for("a.JSONL"), format_for("a.parquet"), format_for("dir")] == \
        ["jsonl", "jsonl", "parquet", "hf"]
    assert format_for("a.parquet", "parquet") == "parquet" and format_for("a.v2", "hf") == "hf"
    with pytest.raises(MarginLensError, match="extension of jsonl"):
        format_for("a.jsonl", "hf")


@pytest.mark.parametrize("fmt", [None, "jsonl", "parquet"])
def test_a_json_name_is_refused_whatever_the_format(fmt):
    """A .json file is read as one JSON document: JSON Lines (or Parquet) under that name would fail its reader."""
    with pytest.raises(MarginLensError, match=r"'a.JSON': a .json file would be read as one JSON document.*"
                                              r"name it .jsonl"):
        format_for("a.JSON", fmt)


def test_cli_refuses_a_json_out_and_writes_nothing(ws, root, capsys):
    base = ["select", "std", "--workspace", root, "--metric", "implicit", "--ratio", "0.5"]
    assert main([*base, "--out", "cut.json"]) == 2
    assert "name it .jsonl" in capsys.readouterr().err
    assert not (ws.exports_dir / "cut.json").exists()
