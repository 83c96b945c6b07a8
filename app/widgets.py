"""Widgets shared by the pages: scorer picker, selection controls, untrusted-text display, pair viewer."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
import streamlit as st
from marginlens.app import explore_state, readers
from marginlens.app.explore_view import COLOR_BY, ExploreControls
from marginlens.core.scoring.score_tables import list_score_tables
from marginlens.core.selection.filters import parse_filter
from marginlens.core.selection.margins import DEFAULT_BETA
from marginlens.core.selection.metrics import get_metric, metric_names
from marginlens.core.selection.quadrants import IM_AXES
from marginlens.core.selection.select import FILTER_STAGES
from marginlens.core.workspace import Workspace

# Markdown (and Streamlit's :shortcode:/$math$) syntax characters: escaped, untrusted text renders literally,
# so no image or link in it can make the browser fetch a URL.
_MARKDOWN_SYNTAX = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$])")


def md_escape(text: object) -> str:
    """`text` as literal characters inside st.markdown/caption/error/warning."""
    return _MARKDOWN_SYNTAX.sub(r"\\\1", str(text))


# Sidebar help (markdown): formulas and filter syntax in code spans, so `~` and `|` render literally.
WEIGHT_HELP = ("Weight of the implicit-margin term in M_AP = `z(m_ex) - w·z(|m_im|)`: a larger w favours pairs the "
               "policy has not learned yet (small |m_im|); w = 0 ranks by the reward margin alone. The paper's "
               "offline runs use w = 1.0; the authors' self-play default is also `z(m_ex) - z(|m_im|)`, i.e. w = 1 "
               "(the 2.5 in their scripts belongs to another option).")
SIGNED_HELP = ("Rank on m_im instead of |m_im|: M_AP = `z(m_ex) - w·z(m_im)` (and implicit, `-z(m_im)`) then "
               "selects the pairs whose labels the policy contradicts most: the most negative m_im, where the "
               "policy prefers the rejected answer. Off: small |m_im| either way, pairs the policy has not "
               "decided yet.")
STAGE_HELP = ("Before ranking: only the pairs passing the filters are candidates; z-scores and k are computed over "
              "them. After ranking: every pair is ranked and k taken over all of them, then the filters remove "
              "pairs from that top-k (fewer than k may remain).")
FILTER_EXAMPLES = ("m_ex>=0.5", "abs_m_im<0.1", "chosen_chars<=2000", "flagged=false",
                   "quadrant=high_potential,ambiguous", "text~paris", "prompt~capital")


def show_error(exc: object) -> None:
    """An error message: it may quote untrusted data (a row's value, a role), so it is escaped."""
    st.error(md_escape(exc))


def scorer_picker(ws: Workspace, dataset: str, compare: bool = False) -> dict[str, Any]:
    """Pick the score tables behind m_ex and m_im; the choice is kept per session in explore_state.

    `compare`: also offer a second policy table (e.g. re-scored with a trained model) whose m_im the
    page compares with the first one's, as picked["compare"] (None: no comparison).
    """
    picked = dict(explore_state.scorers(ws, dataset))
    logprob = [m["fingerprint"] for m in list_score_tables(ws, dataset, "logprob")]
    reward = [m["fingerprint"] for m in list_score_tables(ws, dataset, "reward")]
    models = {m["fingerprint"]: m.get("model", "") for m in list_score_tables(ws, dataset)}
    own = ("dataset scores" if readers.has_scores(str(ws.root), dataset, ws.dataset_manifest(dataset)["fingerprint"])
           else "none (the dataset has no scores)")

    def label(fp: str | None) -> str:
        return "none" if fp is None else f"{models.get(fp, '?')} · {fp[:12]}"

    with st.expander("Score tables", expanded=not logprob):
        cols = st.columns(4)
        options = [None, *logprob]
        picked["policy"] = cols[0].selectbox(
            "Policy (implicit margin)", options, index=options.index(picked["policy"]) if picked["policy"] in options else 0,
            format_func=label, key="_scorer_policy")
        ref_options = [None, *[fp for fp in logprob if fp != picked["policy"]]]
        picked["reference"] = cols[1].selectbox(
            "Reference (DPO form)", ref_options,
            index=ref_options.index(picked["reference"]) if picked["reference"] in ref_options else 0,
            format_func=label, key="_scorer_reference", help="none: SimPO form (mean log-prob); set: DPO log-ratio")
        rw_options = [None, *reward]
        picked["reward"] = cols[2].selectbox(
            "Reward table (explicit margin)", rw_options,
            index=rw_options.index(picked["reward"]) if picked["reward"] in rw_options else 0,
            format_func=lambda fp: (own if fp is None else label(fp)), key="_scorer_reward")
        picked["beta"] = cols[3].number_input("DPO beta", min_value=0.0, value=float(picked.get("beta") or DEFAULT_BETA),
                                              step=0.01, format="%.3f", key="_scorer_beta",
                                              disabled=picked["reference"] is None)
        if compare:
            cmp_options = [None, *[fp for fp in logprob if fp != picked["policy"]]]
            picked["compare"] = st.selectbox(
                "Compare with (second policy table: m_im before vs after)", cmp_options,
                index=cmp_options.index(picked.get("compare")) if picked.get("compare") in cmp_options else 0,
                format_func=label, key="_scorer_compare",
                help="e.g. the table written by 'Re-score with the trained model' on the Train page; "
                     "the comparison shows on the Before / after tab")
    explore_state.set_scorers(picked)
    return picked


def selection_controls(current: ExploreControls, container: Any = None,
                       metrics: tuple[str, ...] | None = None) -> ExploreControls:
    """Metric, weight, ratio, signed, filters, colouring. Widget keys start with "_" (page-local).
    `metrics`: the metrics offered (default: every registered one), e.g. those the dataset's margins allow."""
    box = container or st.sidebar
    c = ExploreControls.from_dict(current.to_dict())
    names = tuple(metrics) if metrics else metric_names()
    c.metric = box.selectbox("Metric", names, index=names.index(c.metric) if c.metric in names else 0,
                             format_func=lambda name: get_metric(name).label or name, key="_ctl_metric",
                             help="\n\n".join(f"**{name}**: {md_escape(get_metric(name).description)}" for name in names))
    uses = get_metric(c.metric).uses
    c.weight = box.slider("Weight w", 0.0, 5.0, float(c.weight), 0.1, key="_ctl_weight",
                          disabled="weight" not in uses, help=WEIGHT_HELP)
    c.ratio = box.slider("Ratio (k = int(ratio·N))", 0.01, 1.0, float(c.ratio), 0.01, key="_ctl_ratio")
    c.signed = box.toggle("Signed m_im (instead of |m_im|)", value=bool(c.signed), key="_ctl_signed",
                          disabled="signed" not in uses, help=SIGNED_HELP)
    c.im_axis = box.radio("Quadrant split on", IM_AXES, index=IM_AXES.index(c.im_axis), horizontal=True,
                          format_func={"abs": "|m_im|", "signed": "m_im"}.get, key="_ctl_axis")
    c.color_by = box.radio("Colour by", COLOR_BY, index=COLOR_BY.index(c.color_by), horizontal=True,
                           format_func={"score": "metric score", "selection": "selection",
                                        "quadrant": "quadrant"}.get, key="_ctl_color")
    text = box.text_area("Filters (one per line)", value="\n".join(c.filters), key="_ctl_filters",
                         placeholder="e.g. m_ex>=0.5",
                         help="All must hold. Examples: " + ", ".join(f"`{e}`" for e in FILTER_EXAMPLES))
    filters, errors = [], []
    for line in (s.strip() for s in text.splitlines()):
        if not line:
            continue
        try:
            parse_filter(line)
            filters.append(line)
        except Exception as exc:  # a typo in one filter should not blank the page: show it, skip it
            errors.append(str(exc))
    c.filters = filters
    for error in errors:
        box.error(error)
    c.filter_stage = box.radio("Apply filters", FILTER_STAGES, index=FILTER_STAGES.index(c.filter_stage),
                               format_func={"before": "before ranking (choose candidates)",
                                            "after": "after ranking (prune the top-k)"}.get,
                               key="_ctl_stage", help=STAGE_HELP)
    c.seed = int(box.number_input("Random seed", value=int(c.seed), step=1, key="_ctl_seed",
                                  disabled="seed" not in uses))
    c.threshold = float(box.number_input("Threshold τ (keep m_ex ≥ τ)", value=float(c.threshold), step=0.1,
                                         key="_ctl_threshold", disabled="threshold" not in uses,
                                         help="The threshold rule keeps the pairs whose explicit margin is at least "
                                              "τ, in the reward's own units, and samples k of them at random"))
    c.max_points = int(box.number_input("Max points drawn", min_value=1000, max_value=200_000,
                                        value=int(c.max_points), step=5000, key="_ctl_points",
                                        help="above this the scatter draws a fixed sample; selections still "
                                             "apply to every pair"))
    return c


def untrusted_text(text: str, height: int | None = None) -> None:
    """Show text from the dataset as plain text: no markdown, no HTML, so nothing in it can make the
    browser run a script or fetch a URL."""
    st.code(text or "", language=None, wrap_lines=True, height=height or "content")


PAIR_ID_WIDTH = 270  # px: the whole 32-character id, so two ids can be told apart


MISSING = "—"  # what every table draws for a missing value: the browser's own "None" reads as a value


def table(data: Any, **kwargs: Any) -> Any:
    """st.dataframe drawing a missing cell as MISSING: the browser draws the `placeholder` there, whatever a
    pandas Styler's na_rep says (a table meant to show blanks passes placeholder="")."""
    return st.dataframe(data, **{"placeholder": MISSING, **kwargs})


def dash_missing(frame: pd.DataFrame) -> Any:
    """`frame` for st.dataframe with a missing value (None, NaN, <NA>) written "—" and numbers to three
    decimals; the columns keep their dtypes, so numbers still sort as numbers. Only what the server renders:
    the browser draws its placeholder in a missing cell (pass it through `table`). A Styler renders every cell
    in Python: only for the rows a page shows (hundreds), never a whole margin frame."""
    return frame.style.format(na_rep=MISSING, precision=3)


def table_with_pick(frame: pd.DataFrame, key: str, height: int = 360, style: Any = None,
                    column_config: dict[str, Any] | None = None, placeholder: str | None = None) -> str | None:
    """A dataframe with single-row selection; returns the pair_id of a newly clicked row, else None. `style`
    (frame -> Styler, dash_missing by default) and `column_config` let a page format and size its columns;
    `placeholder` is what the browser draws for a missing value (MISSING by default; it ignores a Styler's text
    there)."""
    event = st.dataframe((style or dash_missing)(frame), key=key, on_select="rerun", selection_mode="single-row",
                         hide_index=True, width="stretch", height=height,
                         placeholder=MISSING if placeholder is None else placeholder,
                         column_config={"pair_id": st.column_config.TextColumn("pair_id", width=PAIR_ID_WIDTH),
                                        **(column_config or {})})
    rows = event.selection.rows if event and hasattr(event, "selection") else []
    value = str(frame.iloc[rows[0]]["pair_id"]) if rows and rows[0] < len(frame) else None
    # A row stays selected across reruns: report only a new click, so another table (or a
    # suspect link) can open a different pair without this table taking it back.
    last_key = f"{key}__last"
    if value == st.session_state.get(last_key):
        return None
    st.session_state[last_key] = value
    return value
