"""Export: write the selection built on Explore (optionally cut to the scatter selection) with a manifest."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st
from marginlens.app import access, explore_state, export_download, margin_hints, widgets
from marginlens.app.explore_brush import brush_mask, describe_brush, restrict_selection
from marginlens.app.explore_view import compute_view, effective_controls, needs_texts, sources_of
from marginlens.app.state import page_with_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.export import FORMATS, LAYOUTS, export_selection

ws, dataset = page_with_dataset("Export", sidebar_picker=True)
picked = widgets.scorer_picker(ws, dataset)
controls = explore_state.controls()
try:
    margins = explore_state.margins_for(ws, dataset, picked)
    controls, fallback = effective_controls(margins, controls)
    if fallback:  # in the dashboard's words (which page and choice gets the missing margin)
        st.info(margin_hints.missing_words(sources_of(margins)) or fallback)
    texts = explore_state.texts_for(ws, dataset) if needs_texts(controls) else None
    view = compute_view(margins, controls, texts)
except MarginLensError as exc:
    widgets.show_error(exc)
    st.stop()

spec = view.selection.spec
st.markdown(f"**Selection from Explore:** metric `{spec.metric}`"
            + (f", w = {spec.weight:g}" if spec.metric == "map" else "")
            + f", ratio {controls.ratio:g}, {'signed' if spec.signed else 'absolute'} m_im"
            + (f", filters ({spec.filter_stage}): " + ", ".join(f"`{f}`" for f in spec.filters) if spec.filters else "")
            + ". Change it on the Explore page.")
brush = explore_state.brush(dataset)
selection = view.selection
cut = False
if brush:
    cut = st.toggle(f"Only pairs inside the scatter selection ({describe_brush(brush)})", value=True,
                    key="_export_brush")
    if cut:
        selection = restrict_selection(selection, brush_mask(margins, brush), brush)

st.subheader("Preview")
counts = selection.counts()
p1, p2, p3, p4 = st.columns(4)
p1.metric("Rows to write", f"{counts['selected']:,}")
p2.metric("Candidates", f"{counts['candidates']:,}")
p3.metric("k", f"{counts['k']:,}")
p4.metric("Pairs in dataset", f"{counts['total']:,}")
pos = selection.positions
columns = {"m_ex": margins["m_ex"].to_numpy(np.float64, na_value=np.nan),
           "m_im": margins["m_im"].to_numpy(np.float64, na_value=np.nan), "score": selection.scores}
# A margin the dataset does not have would be a row of "None"; the note above already says it is missing.
summary = pd.DataFrame({name: pd.Series(values[pos]).describe() for name, values in columns.items()
                        if np.isfinite(values[pos]).any()}).T
widgets.table(summary, width="stretch")
for warning in selection.warnings:
    st.caption(f"note: {widgets.md_escape(warning)}")

# Writing to the server is the operator's; a viewer sees the preview and the downloads below.
if access.operator_only("writing an export"):
    st.subheader("Write")
    cols = st.columns([1, 1, 3])
    fmt = cols[0].selectbox("Format", FORMATS, key="_export_format",
                            format_func={"jsonl": "JSONL", "parquet": "Parquet", "hf": "save_to_disk folder"}.get)
    layout = cols[1].selectbox("Layout", LAYOUTS, key="_export_layout",
                               help="source: the dataset's own layout; explicit: always an explicit prompt column")
    default_name = export_download.default_name(dataset, spec.metric, controls.ratio, fmt, cut)
    # keyed by what the default depends on, so the suggested name follows the format and the scatter cut
    out = cols[2].text_input("Path inside the workspace's exports/ (relative paths go there)", value=default_name,
                             key=f"_export_path_{fmt}_{'cut' if cut else 'all'}")
    # Two per row: four to a row cut the labels off mid-word. No "outside the workspace" switch: the page
    # writes only under exports/; a path elsewhere is the CLI's --outside-workspace, for someone at the shell.
    o1, o2 = st.columns(2)
    o3, _ = st.columns(2)
    with_metrics = o1.toggle("Metric columns (pair_id, m_ex, m_im, score, rank)", value=True, key="_export_metrics")
    apply_flags = o2.toggle("Apply audit flags", value=True, key="_export_flags",
                            help="leave out pairs an audit flagged 'exclude' and swap those flagged 'swap' "
                                 "(set on the Audit page)")
    overwrite = o3.toggle("Overwrite an existing export", value=False, key="_export_overwrite",
                          help="replaces only a previous MarginLens export at this path (recognised by its manifest); "
                               "any other file or folder is left alone")
    if st.button("Write export", type="primary", disabled=counts["selected"] == 0, key="_export_write"):
        try:
            result = export_selection(ws, dataset, selection, margins, out.strip(), fmt, layout=layout,
                                      include_metrics=with_metrics, overwrite=overwrite, apply_flags=apply_flags)
        except MarginLensError as exc:
            widgets.show_error(export_download.page_error(exc))
        else:
            st.session_state["_export_last"] = {"path": str(result.path), "manifest": str(result.manifest_path),
                                                "rows": result.rows}
            st.success(f"Wrote {result.rows:,} pairs to {result.path}")

last = st.session_state.get("_export_last")
if last:
    try:
        payload, file_name, mime = export_download.download_payload(last["path"])
    except MarginLensError as exc:
        widgets.show_error(exc)
    else:
        st.download_button(f"Download {file_name}", payload, file_name=file_name, mime=mime, key="_export_download",
                           help="the written export (a save_to_disk folder comes zipped, manifest inside)")
    st.subheader("Manifest")
    st.caption(f"`{last['manifest']}`")
    try:
        with open(last["manifest"], encoding="utf-8") as fh:
            st.json(json.load(fh), expanded=1)
    except FileNotFoundError:
        st.warning("The manifest of the last export is gone (moved or deleted).")

# Every signed-in user, viewers included, downloads what operators exported; the bytes are read on click.
exports = export_download.workspace_exports(ws)
if exports:
    st.subheader("Exports in this workspace")
    for i, path in enumerate(exports):
        c1, c2 = st.columns([3, 1])
        c1.markdown(f"`{path.relative_to(ws.exports_dir)}`")
        c2.download_button("Download", lambda p=path: export_download.download_payload(p)[0],
                           file_name=path.name + (".zip" if path.is_dir() else ""), key=f"_export_dl_{i}")
