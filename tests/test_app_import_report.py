"""The Data page's import report on the real HH-RLHF split (../shared/data): the flagged pairs are counted
once, as kept, and every flag name is explained on the page."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_app import app_test, metrics, no_errors
from marginlens.core.data.import_flags import FLAG_NOTES, flag_counts, flagged_pairs
from marginlens.core.data.ingest import import_dataset
from marginlens.core.workspace import Workspace

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


@pytest.fixture(scope="module")
def hh(tmp_path_factory) -> Workspace:
    if not HH.exists():
        pytest.skip(f"{HH} is not here")
    ws = Workspace(tmp_path_factory.mktemp("hh") / "workspace")
    import_dataset(HH, "hh", ws)
    return ws


def test_flag_counts_agree_and_each_flag_is_explained(hh):
    at = app_test("data_page.py", hh)
    at.run()
    no_errors(at)
    manifest = hh.dataset_manifest("hh")
    assert manifest["flagged"] == {"empty_response": 4, "multi_turn_response": 5}
    assert flagged_pairs(hh, "hh") == 9
    m = metrics(at)
    assert m["Kept with flags"] == "9" and "Rows with warnings" not in m
    said = " ".join(e.value for e in at.markdown)
    assert "Kept with flags: 9 of 2,312 pairs" in said and "kept and scored like any other" in said
    listed = next(e.value for e in at.markdown if e.value.startswith("- `"))
    assert "- `multi_turn_response` · 5 pairs: chosen or rejected goes on for more turns" in listed
    assert "- `empty_response` · 4 pairs: the chosen or rejected response is empty" in listed


def test_every_flag_the_import_sets_has_a_note():
    sources = (Path(__file__).resolve().parent.parent / "core" / "data" / "formats.py").read_text()
    for flag in ("multi_turn_response", "not_argmax"):
        assert f'"{flag}"' in sources and flag in FLAG_NOTES
    assert [c.flag for c in flag_counts({"a_new_flag": 1})] == ["a_new_flag"]
