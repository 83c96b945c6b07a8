"""Export: preview, write, manifest, and the cut to the scatter selection, through AppTest."""

from __future__ import annotations

import json

import pytest
from helpers_app import DATASET, POLICY_FP, app_test, build_workspace, metrics, no_errors
from marginlens.app.explore_brush import brush_mask
from marginlens.app.explore_view import ExploreControls, compute_view
from marginlens.core.selection.margins import load_margins

N = 121


@pytest.fixture
def ws(tmp_path):
    return build_workspace(tmp_path / "workspace", n=N - 1)


def controls(**kwargs) -> dict:
    return ExploreControls(**kwargs).to_dict()


def test_preview_write_and_manifest(ws):
    at = app_test("export_page.py", ws)
    at.session_state["explore_controls"] = controls(metric="explicit", ratio=0.25)
    at.run()
    no_errors(at)
    k = int(0.25 * N)
    assert metrics(at)["Rows to write"] == str(k)
    summary = at.dataframe[0].value
    assert summary.loc["m_ex", "count"] == k
    at.button(key="_export_write").click().run()
    no_errors(at)
    assert at.success and at.success[0].value.startswith(f"Wrote {k} pairs")
    path = ws.exports_dir / f"{DATASET}-explicit-25pct.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == k
    assert {"pair_id", "m_ex", "m_im", "score", "rank"} <= set(rows[0])
    margins = load_margins(ws, DATASET, policy_fp=POLICY_FP)
    top = set(margins.nlargest(k, "m_ex")["pair_id"])
    assert {r["pair_id"] for r in rows} == top
    shown = at.json[0].value
    manifest = json.loads(shown) if isinstance(shown, str) else shown
    assert manifest["selection"]["metric"] == "explicit" and manifest["counts"]["exported"] == k

    # the same path again: refused without overwrite, with the reason on the page
    at.button(key="_export_write").click().run()
    assert any("already exists" in e.value for e in at.error)


def test_scatter_selection_cut_and_metric_columns_off(ws):
    box = {"kind": "box", "x": [-1.0, 5.0], "y": [-1.0, 1.0], "pair_ids": []}
    at = app_test("export_page.py", ws)
    at.session_state["explore_controls"] = controls(ratio=0.5)
    at.session_state["explore_brush"] = {"dataset": DATASET, "brush": box}
    at.run()
    no_errors(at)
    margins = load_margins(ws, DATASET, policy_fp=POLICY_FP)
    view = compute_view(margins, ExploreControls(ratio=0.5))
    expected = set(view.selection.positions) & set(brush_mask(margins, box).nonzero()[0])
    assert 0 < len(expected) < view.selection.k
    assert metrics(at)["Rows to write"] == str(len(expected))
    at.toggle(key="_export_metrics").set_value(False).run()
    at.selectbox(key="_export_format").set_value("parquet").run()
    at.button(key="_export_write").click().run()
    no_errors(at)
    import pyarrow.parquet as pq

    table = pq.read_table(ws.exports_dir / f"{DATASET}-map-50pct-scatter.parquet")  # the name says it is cut
    assert table.num_rows == len(expected)
    assert "m_ex" not in table.column_names and "prompt" in table.column_names
    manifest = json.loads((ws.exports_dir / f"{DATASET}-map-50pct-scatter.parquet.manifest.json").read_text())
    assert any(w.startswith("restricted to the scatter selection (box") for w in manifest["warnings"])

    # switching the cut off exports the whole top-k
    at.toggle(key="_export_brush").set_value(False).run()
    assert metrics(at)["Rows to write"] == str(view.selection.k)

    assert at.text_input(key="_export_path_parquet_all").value == f"{DATASET}-map-50pct.parquet"


def test_download_button_and_page_wording(ws):
    at = app_test("export_page.py", ws)
    at.session_state["explore_controls"] = controls(metric="explicit", ratio=0.25)
    at.run()
    at.button(key="_export_write").click().run()
    no_errors(at)
    path = ws.exports_dir / f"{DATASET}-explicit-25pct.jsonl"
    download = {d.key: d for d in at.get("download_button")}
    assert download["_export_download"].proto.label == f"Download {path.name}"
    # and in the list every signed-in user (a viewer too) downloads from
    assert set(download) == {"_export_download", "_export_dl_0"}
    at.button(key="_export_write").click().run()  # again: the page names its own toggle, not a CLI flag
    (error,) = at.error
    assert "Overwrite an existing export" in error.value and "--overwrite" not in error.value.replace("\\", "")
    at.text_input(key="_export_path_jsonl_all").set_value("/tmp/elsewhere.jsonl").run()
    at.button(key="_export_write").click().run()
    # the page has no switch for it: a path outside the workspace is refused, and only the CLI can write there
    assert not [t for t in at.toggle if t.key == "_export_outside"]
    shown = [e.value.replace("\\", "") for e in at.error]  # the page escapes markdown
    assert any("the dashboard writes exports only under" in e and "--outside-workspace" in e for e in shown)
    # overwrite switched on, a path up into the workspace: refused, the datasets still there
    before = sorted(str(p) for p in ws.root.rglob("*"))
    at.toggle(key="_export_overwrite").set_value(True).run()
    at.text_input(key="_export_path_jsonl_all").set_value("..").run()
    at.button(key="_export_write").click().run()
    assert any("it is the workspace itself" in e.value.replace("\\", "") for e in at.error)
    assert sorted(str(p) for p in ws.root.rglob("*")) == before and ws.dataset_names() == [DATASET]
    at.toggle(key="_export_overwrite").set_value(False).run()
    # a save_to_disk folder downloads as one zip holding its files and manifest
    at.selectbox(key="_export_format").set_value("hf").run()
    at.button(key="_export_write").click().run()
    no_errors(at)
    from marginlens.app.export_download import download_payload

    data, name, mime = download_payload(ws.exports_dir / f"{DATASET}-explicit-25pct")
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert name == f"{DATASET}-explicit-25pct.zip" and mime == "application/zip"
    assert f"{DATASET}-explicit-25pct/marginlens_manifest.json" in names
    assert at.get("download_button")[0].proto.label == f"Download {name}"
