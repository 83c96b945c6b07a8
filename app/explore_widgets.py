"""Explore's own widgets: the pair table's columns and the pair card that says why a pair was picked.

The numbers come from app/explore_tables (table_frame, pair_details, pick_reason); this module only lays them
out. Every text from the dataset goes through widgets.untrusted_text (shown as text, never as markdown).
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from marginlens.app.explore_view import quadrant_meanings
from marginlens.app.widgets import md_escape, untrusted_text

# Pixel widths that keep every column of the pair table inside the main column at a 1400 px window (about
# 940 px beside the sidebar, less the row picker's checkbox): the numbers first and narrow, the prompt last
# and taking what is left (a wider window spreads its extra over every column).
TABLE_WIDTH = 900
NUMBER_WIDTH = 66
WIDTHS = {"rank": 48, "quadrant": 118, "flags": 72, "row": 48}
MIN_PROMPT_WIDTH = 200


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 102nd."""
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def pair_table_columns(frame: Any, im_axis: str = "abs") -> dict[str, Any]:
    """st.dataframe column_config for explore_tables.table_frame: widths, and a help line per column (the
    quadrant's names spelled out). The pair id is hidden: the pair card shows it, and 32 characters would push
    the numbers out of sight."""
    im = "|m_im|" if im_axis == "abs" else "m_im"
    helps = {
        "rank": "place in the top-k (1 = picked first); blank: not selected",
        "score": "the metric's score: higher is picked first; the top-k are those at or above the cut-off",
        "m_ex": "explicit margin: reward (or dataset score) of the chosen answer minus that of the rejected one",
        "m_im": "implicit margin, signed: > 0 the policy prefers the chosen answer, < 0 the rejected one",
        "quadrant": f"where the pair sits on the (m_ex, {im}) plane, split at the medians: "
                    + "; ".join(f"{name}: {line}" for name, line in quadrant_meanings(im_axis).items()),
        "flags": "the import's flags (e.g. empty_response)",
        "row": "the pair's row in the imported file",
        "prompt": "the prompt's first characters; click the row to read the pair",
    }
    config: dict[str, Any] = {"pair_id": None}
    for name in frame.columns:
        if name == "pair_id":
            continue
        help_text = helps.get(name)
        if name.startswith("z("):
            help_text = "z-score of m_ex over the candidates: standard deviations above (+) or below (-) their mean"
        elif name.startswith("w·z("):
            help_text = (f"w times the z-score of {name[4:-1]} over the candidates: M_AP subtracts it, so a policy "
                         "less decided than average (negative) raises the score")
        width = WIDTHS.get(name, NUMBER_WIDTH + (14 if name.startswith("w·z(") else 0))
        config[name] = st.column_config.Column(name, width=width, help=help_text)
    if "prompt" in config:
        rest = sum(c["width"] for name, c in config.items() if c is not None and name != "prompt")
        config["prompt"]["width"] = max(MIN_PROMPT_WIDTH, TABLE_WIDTH - rest)
    return config


def _why(details: dict[str, Any]) -> list[str]:
    """The lines of "why this pair": the score from its terms, the cut-off at the ratio, the verdict."""
    why = details["why"]
    lines = []
    if why["terms"]:
        (z_name, z_ex), (w_name, wz_im) = why["terms"].items()
        lines.append(f"**M_AP** = {z_name} − {w_name} = {_fmt(z_ex, True)} − ({_fmt(wz_im, True)}) = "
                     f"**{_fmt(why['score'], True)}** (w = {why['weight']:g}; z over the {why['candidates']:,} "
                     "candidates).")
        ex_side = "above" if z_ex >= 0 else "below"
        im_side = ("less decided than on an average pair, which raises" if wz_im < 0
                   else "more decided than on an average pair, which lowers")
        lines.append(f"{z_name} {_fmt(z_ex, True)}: the explicit margin is {abs(z_ex):.2f} standard deviations "
                     f"{ex_side} the candidates' mean. {w_name} {_fmt(wz_im, True)}: the policy is {im_side} "
                     "M_AP.")
    elif why["score"] is not None and why["metric"] == "random":
        lines.append(f"**random**: a seeded draw (seed {why['seed']}) over the {why['candidates']:,} candidates; the "
                     f"score **{why['score']:.0f}** is the pair's place in it counted from the end, so higher is drawn "
                     "first.")
    elif why["score"] is not None:
        lines.append(f"**{why['metric']} score** = **{_fmt(why['score'], True)}** (over the {why['candidates']:,} "
                     "candidates).")
    if why["cutoff"] is not None:
        ratio = f"ratio {why['ratio']:.2f}: k = int({why['ratio']:.2f} × {why['candidates']:,}) = {why['k']:,}"
        lines.append(f"**Cut-off** at {ratio}; the {ordinal(why['k'])} score, the lowest still selected, is "
                     f"**{_fmt(why['cutoff'], True)}**.")
    lines.append(f"**This pair:** {why['verdict']}.")
    return lines


def pair_card(details: dict[str, Any], im_axis: str = "abs") -> None:
    """Prompt, chosen and rejected side by side with their numbers, and why the pair was (not) picked."""
    quadrant = details["quadrant"]
    m_im = details["m_im"]
    # said on the page, not in a tooltip: the |m_im| quadrants put such a pair beside ones the policy got right
    sign = "" if m_im is None else (" · **policy prefers the rejected answer** (m_im < 0)" if m_im < 0
                                    else " · policy prefers the chosen answer" if m_im > 0 else "")
    st.markdown(
        f"**Pair** `{details['pair_id']}` · row {details['source_row']} · "
        f"{'selected, rank ' + str(details['rank']) if details['selected'] else 'not selected'}"
        + (f" · quadrant `{quadrant}`" if quadrant else "") + sign
    )
    why = details["why"]
    # a margin the pair lacks is left out (the note at the top of the page says how to get it)
    numbers = [(label, text, help_text) for label, value, text, help_text in (
        ("m_ex", details["m_ex"], _fmt(details["m_ex"]), "explicit margin (reward or dataset score, chosen minus "
                                                         "rejected)"),
        ("m_im", m_im, _fmt(m_im, True), "signed: > 0 the policy prefers the chosen answer, < 0 the rejected one"),
    ) if value is not None]
    numbers += [(name, _fmt(value, True), None) for name, value in why["terms"].items()]
    numbers += [("score", _fmt(details["score"], True), f"the {why['metric']} score; higher is picked first"),
                ("cut-off", _fmt(why["cutoff"], True), "the lowest score still selected at this ratio")]
    for col, (label, value, help_text) in zip(st.columns(len(numbers)), numbers, strict=True):
        col.metric(label, value, help=help_text)
    st.markdown("**Why this pair?**  \n" + "  \n".join(_why(details)))
    if quadrant:
        st.caption(f"Quadrant `{quadrant}`: {quadrant_meanings(im_axis)[quadrant]}.")
    st.caption("Flags: " + (md_escape(", ".join(details["flags"])) or "none"))
    st.caption("Prompt")
    for message in details["prompt"]:
        st.caption(md_escape(message["role"]))
        untrusted_text(message["content"])
    left, right = st.columns(2)
    for col, side in ((left, "chosen"), (right, "rejected")):
        with col:
            n = details["numbers"][side]
            st.markdown(f"**{side.title()}**")
            tokens = None if n["tokens"] is None else str(int(n["tokens"]))
            st.caption(f"log-prob {_fmt(n['logp'])} · tokens {tokens or '—'} · reward {_fmt(n['reward'])} · "
                       f"dataset score {_fmt(n['score'])}")
            untrusted_text(details[side])
    if details["truncated"]:
        st.warning("A scorer truncated this pair (longer than its max length): its m_im covers only the start.")
