"""Noisy-pair flags in exports: "exclude" drops exactly the flagged selected pairs, "swap" exchanges their
responses (scores and margin signs too), the manifest records both, and apply_flags=False changes nothing."""

from __future__ import annotations

import json

import pytest
from helpers_data import hh_records, make_dataset, random_logprobs, standard_records
from marginlens.core.cli import main
from marginlens.core.data.flags import flag_pairs
from marginlens.core.selection.export import export_selection
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.select import SelectionSpec, select
from marginlens.core.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    for name, records in (("std", standard_records(20)), ("hh", hh_records(20))):
        make_dataset(ws, name, records, tmp_path)
        random_logprobs(ws, name)
    return ws


def selection_of(ws: Workspace, name: str):
    margins = load_margins(ws, name, policy_fp="pol")
    return select(margins, SelectionSpec(metric="implicit")), margins


def rows_by_id(path) -> dict[str, dict]:
    return {rec["pair_id"]: rec for rec in map(json.loads, path.read_text().splitlines())}


def test_exclude_and_swap_exactly_the_flagged_pairs(ws):
    sel, margins = selection_of(ws, "std")
    unselected = [p for p in margins["pair_id"] if p not in set(sel.pair_ids)]
    plain = export_selection(ws, "std", sel, margins, "plain.jsonl", include_metrics=True)
    before = rows_by_id(plain.path)
    assert plain.manifest["flags"]["applied"] and plain.manifest["flags"]["excluded"] == []

    excluded, swapped = sel.pair_ids[:2], sel.pair_ids[2:4]
    flag_pairs(ws, "std", [*excluded, unselected[0]], action="exclude")
    flag_pairs(ws, "std", [*swapped, unselected[1]], action="swap", reason="judge prefers rejected")
    result = export_selection(ws, "std", sel, margins, "flagged.jsonl", include_metrics=True)
    after = rows_by_id(result.path)

    assert set(after) == set(before) - set(excluded) and result.rows == len(sel.pair_ids) - 2
    for pid in swapped:
        old, new = before[pid], after[pid]
        assert (new["chosen"], new["rejected"]) == (old["rejected"], old["chosen"])
        assert (new["score_chosen"], new["score_rejected"]) == (old["score_rejected"], old["score_chosen"])
        assert (new["m_ex"], new["m_im"]) == (-old["m_ex"], -old["m_im"])
        assert (new["prompt"], new["score"], new["rank"]) == (old["prompt"], old["score"], old["rank"])
    for pid in set(after) - set(swapped):
        assert after[pid] == before[pid]  # rank included: the metric's ranking, not renumbered after exclusions

    flags = result.manifest["flags"]
    assert flags["applied"] and flags["flags_file"] == "audits/std/flags.json"
    assert flags["excluded"] == sorted([*excluded, unselected[0]])
    assert flags["swapped"] == sorted([*swapped, unselected[1]])
    assert (flags["excluded_in_export"], flags["swapped_in_export"]) == (2, 2)  # unselected flags touch nothing
    counts = result.manifest["counts"]
    assert (counts["selected"], counts["exported"]) == (len(sel.pair_ids), len(sel.pair_ids) - 2)
    on_disk = json.loads(result.manifest_path.read_text())
    assert on_disk["flags"] == flags

    ignored = export_selection(ws, "std", sel, margins, "ignored.jsonl", include_metrics=True, apply_flags=False)
    assert ignored.path.read_bytes() == plain.path.read_bytes()
    assert ignored.manifest["flags"]["applied"] is False
    assert (ignored.manifest["flags"]["excluded_in_export"], ignored.manifest["flags"]["swapped_in_export"]) == (0, 0)
    assert ignored.manifest["flags"]["excluded"] == flags["excluded"]  # the flags are recorded, as ignored
    assert ignored.manifest["counts"]["exported"] == len(sel.pair_ids)


def test_swap_in_a_transcript_layout_and_the_cli(ws, capsys):
    sel, margins = selection_of(ws, "hh")
    pid = sel.pair_ids[0]
    flag_pairs(ws, "hh", [pid], action="swap")
    flag_pairs(ws, "hh", [sel.pair_ids[1]], action="exclude")
    base = ["--workspace", str(ws.root), "select", "hh", "--metric", "implicit", "--policy", "pol", "--with-metrics"]
    assert main([*base, "--out", "hh-flags.jsonl"]) == 0
    assert "left out 1 pairs flagged 'exclude', label-swapped 1" in capsys.readouterr().out
    assert main([*base, "--out", "hh-raw.jsonl", "--ignore-flags"]) == 0
    assert "flags ignored: 2 flagged pairs" in capsys.readouterr().out

    flagged = rows_by_id(ws.exports_dir / "hh-flags.jsonl")
    raw = rows_by_id(ws.exports_dir / "hh-raw.jsonl")
    assert set(raw) - set(flagged) == {sel.pair_ids[1]}
    # hh-rlhf keeps whole "\n\nHuman: ... \n\nAssistant: ..." transcripts: the swap exchanges them whole
    assert flagged[pid]["chosen"] == raw[pid]["rejected"] and flagged[pid]["rejected"] == raw[pid]["chosen"]
    assert flagged[pid]["chosen"].startswith("\n\nHuman: Tell me fact")
    manifest = json.loads((ws.exports_dir / "hh-raw.jsonl.manifest.json").read_text())
    assert manifest["flags"]["applied"] is False and manifest["counts"]["exported"] == len(sel.pair_ids)
