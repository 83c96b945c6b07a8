"""Explore: explicit vs implicit margins, the selection they make, and where the metrics contradict."""

from __future__ import annotations

import logging
import time

import pandas as pd
import streamlit as st
from marginlens.app import explore_state, widgets
from marginlens.app.explore_brush import brush_from_event, brush_key, brush_mask, describe_brush
from marginlens.app.explore_figures import histogram_figure, histogram_marks, overlap_figure, scatter_figure
from marginlens.app.explore_frame import frame_columns
from marginlens.app.explore_shift import margin_shift, shift_figure
from marginlens.app.explore_tables import (
    TABLE_SORTS,
    compared_by_default,
    correlation_rows,
    label_contradictions,
    overlap_matrix,
    pair_details,
    table_frame,
    table_style,
)
from marginlens.app.explore_view import (
    available_metrics,
    compute_view,
    effective_controls,
    filtered_mask,
    needs_texts,
    quadrant_legend,
    scale_note,
    sources_of,
)
from marginlens.app.explore_widgets import pair_card, pair_table_columns
from marginlens.app.margin_hints import missing_words
from marginlens.app.state import page_with_dataset
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.compare import CONTRADICTED_TITLE, SUSPECTS_TITLE

# A run's server time goes to the server's log (a warning when a person would notice the wait), not onto the page.
SLOW_RUN_S = 2.0
log = logging.getLogger("marginlens.dashboard.explore")
started = time.perf_counter()
ws, dataset = page_with_dataset("Explore", sidebar_picker=True)
picked = widgets.scorer_picker(ws, dataset, compare=True)
try:
    margins = explore_state.margins_for(ws, dataset, picked)
except MarginLensError as exc:
    widgets.show_error(exc)
    st.stop()

with st.sidebar:
    st.subheader("Selection")
    controls = widgets.selection_controls(explore_state.controls(), metrics=available_metrics(margins))
explore_state.set_controls(controls)
controls, _ = effective_controls(margins, controls)
margin_note = missing_words(sources_of(margins))  # the dashboard's words: which page and which choice
if margin_note:  # the one place that says which margin is missing and what still works
    st.info(margin_note)
columns = frame_columns(margins)

try:
    texts = explore_state.texts_for(ws, dataset) if needs_texts(controls) else None
    view = compute_view(margins, controls, texts)
    shown = filtered_mask(margins, controls, texts)
except MarginLensError as exc:
    widgets.show_error(exc)
    st.stop()

counts = view.selection.counts()
attrs = margins.attrs
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Pairs", f"{counts['total']:,}")
c2.metric("Candidates", f"{counts['candidates']:,}", help="have the margins the metric needs and pass the filters")
c3.metric("Selected (top-k)", f"{counts['selected']:,}")
c4.metric("Missing margins", f"{counts['missing_margins']:,}")
c5.metric("m_im < 0", f"{int((margins['m_im'] < 0).sum()):,}", help="the policy prefers the rejected response")
st.caption((f"m_ex from `{attrs.get('m_ex_source')}`" if columns.has_explicit else "no explicit margin")
           + f" · m_im form `{attrs.get('m_im_form') or 'none'}`"
           + (f" (beta {attrs.get('beta')})" if attrs.get("beta") else ""))
for warning in view.selection.warnings:
    st.warning(widgets.md_escape(warning))

# ---- scatter + brush ------------------------------------------------------------------------------
brush = explore_state.brush(dataset)
has_both = columns.both
if has_both.any():
    generation = st.session_state.get("_scatter_generation", 0)
    chart_key = f"_scatter_{generation}"
    returning = chart_key not in st.session_state  # page (re-)entered: the chart has no selection of its own
    # Ring the brushed points only for a brush the chart does not show itself (made on an earlier visit).
    rings = brush_mask(margins, brush) if brush and returning else None
    figure, drawn = scatter_figure(margins, view, controls, rings)
    event = st.plotly_chart(figure, key=chart_key, on_select="rerun", selection_mode=("box", "lasso"),
                            width="stretch", config={"displaylogo": False})
    from_event = brush_from_event(event.selection if event else None)
    if returning:
        st.session_state["_scatter_last"] = brush_key(from_event)
    elif brush_key(from_event) != st.session_state.get("_scatter_last"):
        # only a change of the chart's own selection moves the brush (a double click clears it)
        st.session_state["_scatter_last"] = brush_key(from_event)
        brush = from_event
        explore_state.set_brush(dataset, brush)
    inside = brush_mask(margins, brush)
    note = f"drawing {drawn:,} of {int(has_both.sum()):,} pairs" + (
        " over a density view of all of them (a fixed sample; selections apply to all pairs)"
        if drawn < has_both.sum() else "")
    left, right = st.columns([4, 1])
    left.caption(note + " · drag a box or lasso to filter the table; quadrant lines at the medians")
    if controls.color_by == "quadrant":
        st.caption(quadrant_legend(controls.im_axis, view.ex_split, view.im_split))
    if brush and right.button("Clear scatter selection", key="_clear_brush"):
        explore_state.set_brush(dataset, None)
        # a new chart key drops the chart's own selection state too
        st.session_state["_scatter_generation"] = generation + 1
        st.rerun()
else:
    inside = None
    if not margin_note:  # both margins exist, but on different pairs
        st.info("No pair has both margins yet, so there is no scatter: on the Score page, score the same pairs "
                "(the same sample size) for both margins, a policy model for m_im and an LLM rating or reward "
                "model for m_ex.")

st.caption(scale_note(attrs))

# ---- table + pair viewer ---------------------------------------------------------------------------
mask = shown & inside if inside is not None else shown
if brush:
    st.markdown(f"**Scatter selection:** {describe_brush(brush)} — {int(mask.sum()):,} pairs "
                f"({int((mask & view.selected).sum()):,} in the top-k)")
sort_cols = st.columns([2, 1, 1, 3])
sort_by = sort_cols[0].selectbox("Sort by", TABLE_SORTS, key="_sort_by")
ascending = sort_cols[1].toggle("Ascending", value=sort_by in ("rank", "row"), key="_sort_asc")
only_selected = sort_cols[2].toggle("Top-k only", value=False, key="_only_selected")
if only_selected:
    mask = mask & view.selected
table, table_counts = table_frame(margins, view, mask, sort_by, ascending)
unscored = table_counts["matching"] - table_counts["scored"]
sort_cols[3].caption(
    f"{table_counts['scored']:,} scored of {table_counts['matching']:,} matching pairs; showing {len(table):,} "
    f"(sorted over all {table_counts['scored']:,} scored). Rank blank: not in the top-k. Click a row to open the "
    "pair." + (f" The {unscored:,} pairs without the margins {controls.metric!r} needs are not listed: the Score "
               "page scores them." if unscored else ""))
# the browser draws a missing cell as its placeholder whatever the Styler says: blank, so an unselected rank
# is empty (only candidates are listed, so the scores and terms are never missing)
clicked = widgets.table_with_pick(table, key="_pairs_table", style=table_style, placeholder="",
                                  column_config=pair_table_columns(table, controls.im_axis))
if clicked:
    explore_state.set_open_pair(dataset, clicked)


def show_pair(pair_id: str | None) -> None:
    if pair_id is None:
        st.info("No pair matches the current filters.")
        return
    try:
        pair_card(pair_details(ws, dataset, margins, view, pair_id, explore_state.texts_for(ws, dataset)),
                  controls.im_axis)
    except MarginLensError as exc:
        widgets.show_error(exc)
        explore_state.set_open_pair(dataset, None)


def histograms() -> None:
    marks = histogram_marks(margins, view, controls)
    # only the margins the dataset has: no empty histogram next to the note on the missing one
    panels = [(columns.m_ex, "m_ex (explicit)", "m_ex", "_hist_ex")] if columns.has_explicit else []
    panels += [(columns.m_im, "m_im (implicit, signed)", "m_im", "_hist_im")] if columns.has_implicit else []
    panels.append((view.scores, f"{controls.metric} score", "score", "_hist_score"))
    for col, (values, title, mark, key) in zip(st.columns(len(panels)), panels, strict=True):
        col.plotly_chart(histogram_figure(values, view.selected, title, marks[mark]), width="stretch", key=key)


def contradictions() -> None:
    if not has_both.any():
        st.info("Contradictions compare metrics on the pairs that have both margins; this dataset has none yet: "
                "on the Score page, score the same pairs for both.")
        return
    report = explore_state.comparison_for(ws, dataset, picked, controls)
    quads = report.quadrants
    st.markdown(f"**Quadrants** (m_ex split {quads.ex_split:.3f}, "
                f"{'|m_im|' if quads.im_axis == 'abs' else 'm_im'} split {quads.im_split:.3f}); "
                f"top {report.k:,} of {report.n:,} pairs with both margins per metric")
    widgets.table(widgets.dash_missing(pd.DataFrame(quads.counts)), hide_index=True, width="stretch")
    st.caption(quadrant_legend(quads.im_axis))  # the splits are in the heading above
    options = list(report.selected)  # the key names them: another dataset's choices are never carried over
    shown = st.multiselect("Metrics compared", options, default=compared_by_default(report),
                           key="_compared:" + ",".join(options),
                           help="The overlap and the rank correlations of these; the paper's four by default.")
    if len(shown) < 2:
        st.info("Pick two or more metrics to see how their top-k sets overlap and how their rankings correlate.")
    else:
        left, right = st.columns(2)
        with left:
            st.markdown("**Top-k overlap** (pairs in both sets; diagonal = k)")
            st.plotly_chart(overlap_figure(overlap_matrix(report, shown)), width="stretch", key="_overlap",
                            config={"displaylogo": False})
        with right:
            st.markdown("**Rank correlations**")
            widgets.table(widgets.dash_missing(pd.DataFrame(correlation_rows(report, shown))), hide_index=True,
                          width="stretch")
    label_noise(report)


def label_noise(report) -> None:
    """Two lists, because "large m_ex, m_im < 0" is label noise only where the explicit margin can be wrong."""
    against, n = label_contradictions(margins, top=50)
    st.markdown(f"**{CONTRADICTED_TITLE}** — m_ex < 0: the reward model or the dataset's own "
                f"scores prefer the rejected answer. The likeliest label noise: {n['n']:,} pairs, {n['both']:,} of "
                "them with m_im < 0 too (the policy agrees it is backwards). Most negative m_ex first; click one "
                "to open it.")
    if against.empty:
        st.write("No pair has m_ex < 0: the explicit margin agrees with every label (always so where the chosen "
                 "answer is the higher-scored one).")
    elif opened := widgets.table_with_pick(against, key="_against", height=240):
        explore_state.set_open_pair(dataset, opened)
    st.markdown(f"**{SUSPECTS_TITLE}** — m_ex above its median, but the policy prefers "
                "the rejected answer (m_im < 0). Noise suspects only where the explicit margin itself can be wrong "
                "(a reward model's error); where it is an exact check, such as the demo's verifier, these labels "
                "are right and the policy is wrong. Audit them (Audit page) before dropping any. Click one to "
                "open it.")
    suspects = pd.DataFrame(report.suspects)
    if suspects.empty:
        st.write("No pair has a large explicit margin with a negative implicit margin.")
    else:
        suspects["prompt_preview"] = suspects["prompt_preview"].str.slice(0, 80)
        clicked_suspect = widgets.table_with_pick(
            suspects[["pair_id", "rank", "source_row", "m_ex", "m_im", "suspicion", "prompt_preview"]]
            .rename(columns={"source_row": "row"}),
            key="_suspects", height=300)
        if clicked_suspect:
            explore_state.set_open_pair(dataset, clicked_suspect)
    listed = set(against["pair_id"]) | set(suspects.get("pair_id", ()))
    if explore_state.open_pair(dataset) in listed:
        show_pair(explore_state.open_pair(dataset))


def before_after() -> None:
    compare = picked.get("compare")
    if not compare:
        st.info("Pick a second policy table under Score tables → \"Compare with\" (e.g. the one written by "
                "\"Re-score with the trained model\" on the Train page) to compare implicit margins.")
        return
    try:
        # the same reference and beta as the current m_im, so both sides use one margin form
        after = explore_state.margins_for(ws, dataset, {**picked, "policy": compare})
        shift = margin_shift(margins, after, mask)
    except MarginLensError as exc:
        widgets.show_error(exc)
        return
    n = shift.counts
    st.markdown(f"**m_im before vs after** for the {n['pairs']:,} pairs the table shows (filters, scatter "
                "selection and top-k toggle apply)" + (f"; {n['missing']:,} lack a margin in one table" if n["missing"]
                                                        else ""))
    b1, b2, b3, b4 = st.columns(4)
    b1.metric("Pairs compared", f"{n['pairs']:,}")
    b2.metric("Flipped to chosen", f"{n['to_chosen']:,}", help="m_im < 0 before, > 0 after")
    b3.metric("Flipped to rejected", f"{n['to_rejected']:,}", help="m_im > 0 before, < 0 after")
    b4.metric("Mean change", "—" if n["mean_change"] is None else f"{n['mean_change']:+.3f}",
              help=f"{n['grew']:,} margins grew; median change "
                   + ("—" if n["median_change"] is None else f"{n['median_change']:+.3f}"))
    st.plotly_chart(shift_figure(shift, controls.max_points), width="stretch", key="_shift_scatter",
                    config={"displaylogo": False})
    st.caption("Above the diagonal: the second policy prefers the chosen response more than the first did.")


# Lazy tabs: only the open one runs, so the contradiction report (four rankings and rank correlations)
# and the before/after comparison are computed only while someone looks at them.
pair_tab, hist_tab, contra_tab, shift_tab = st.tabs(["Pair", "Histograms", "Contradictions", "Before / after"],
                                                    key="_explore_tab", on_change="rerun")
if pair_tab.open:
    with pair_tab:
        show_pair(explore_state.open_pair(dataset) or (str(table.iloc[0]["pair_id"]) if len(table) else None))
if hist_tab.open:
    with hist_tab:
        histograms()
if contra_tab.open:
    with contra_tab:
        contradictions()
if shift_tab.open:
    with shift_tab:
        before_after()

elapsed = time.perf_counter() - started
st.session_state["_explore_server_s"] = elapsed  # for tests and bench/dashboard.py
log.log(logging.WARNING if elapsed >= SLOW_RUN_S else logging.DEBUG, "Explore on %r: script run %.2f s", dataset,
        elapsed)
