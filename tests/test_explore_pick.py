"""Explore explains its pick (issue 23): the table's margins and M_AP terms, the scored part of a sampled scoring,
the pair card's terms and cut-off, the quadrant names, the two label-noise lists on the demo, no debug line."""

from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pyarrow as pa
import pytest
from helpers_app import DATASET, POLICY_FP, app_test, build_workspace, metrics, no_errors
from marginlens.app.explore_tables import label_contradictions, pick_reason, table_frame
from marginlens.app.explore_view import ExploreControls, compute_view, quadrant_meanings
from marginlens.app.explore_widgets import ordinal, pair_table_columns
from marginlens.core.demo.build import DEMO_NAME, PAIRS_FILE, ensure_demo
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.quadrants import QUADRANTS, quadrant_labels
from marginlens.core.workspace import Workspace

# The main column beside the sidebar at a 1400 px window (measured in Chromium), less the row picker's checkbox.
TABLE_PX_AT_1400 = 940 - 35


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("pick") / "workspace", n=120)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("demo") / "workspace")
    ensure_demo(ws)
    return ws


def texts(at) -> str:
    return "\n".join([c.value for c in at.caption] + [m.value for m in at.markdown] + [i.value for i in at.info])


def column_config(element) -> dict:
    return json.loads(element.proto.columns)


def test_table_shows_margins_and_map_terms_within_1400_px(ws):
    at = app_test("explore_page.py", ws)
    at.run()
    no_errors(at)
    table = at.dataframe[0]
    frame = table.value
    assert list(frame.columns[:6]) == ["rank", "score", "z(m_ex)", "w·z(|m_im|)", "m_ex", "m_im"]
    # the terms are M_AP's: score = z(m_ex) - w·z(|m_im|) on every row
    assert np.allclose(frame["z(m_ex)"] - frame["w·z(|m_im|)"], frame["score"])
    config = column_config(table)
    assert config["pair_id"]["hidden"] is True  # the card shows it; 32 characters pushed the numbers away
    widths = [c["width"] for name, c in config.items() if name != "pair_id" and name in frame.columns]
    assert len(widths) == len(frame.columns) - 1 and sum(widths) <= TABLE_PX_AT_1400
    # sorted by m_im, the m_im column is right there; weight 2 doubles the implicit term
    at.slider(key="_ctl_weight").set_value(2.0).run()
    at.selectbox(key="_sort_by").set_value("m_im").run()
    frame = at.dataframe[0].value
    assert frame["m_im"].is_monotonic_decreasing
    assert np.allclose(frame["z(m_ex)"] - frame["w·z(|m_im|)"], frame["score"])
    margins = load_margins(ws, DATASET, policy_fp=POLICY_FP)
    one, two = (compute_view(margins, ExploreControls(weight=w)).terms for w in (1.0, 2.0))
    assert np.allclose(two["w·z(|m_im|)"], 2 * one["w·z(|m_im|)"]) and np.allclose(two["z(m_ex)"], one["z(m_ex)"])
    # other metrics have one term: no z columns
    at.selectbox(key="_ctl_metric").set_value("explicit").run()
    assert not any(c.startswith(("z(", "w·z(")) for c in at.dataframe[0].value.columns)


def test_signed_variant_names_its_term(ws):
    margins = load_margins(ws, DATASET, policy_fp=POLICY_FP)
    view = compute_view(margins, ExploreControls(signed=True, weight=0.5))
    frame, _ = table_frame(margins, view, None)
    assert "w·z(m_im)" in frame and "w·z(|m_im|)" not in frame
    assert np.allclose(frame["z(m_ex)"] - frame["w·z(m_im)"], frame["score"])
    config = pair_table_columns(frame)
    assert "subtracts" in config["w·z(m_im)"]["help"]


def sampled_workspace(tmp_path, n: int = 60, scored: int = 20) -> Workspace:
    """HH-like: no scores of its own, a policy table over `scored` of `n` pairs (a sampled scoring)."""
    from helpers_app import records
    from marginlens.core.data.ingest import import_dataset
    from marginlens.core.scoring.score_tables import save_score_table

    ws = Workspace(tmp_path / "workspace")
    rows = [{k: v for k, v in r.items() if not k.startswith("score_")} for r in records(n)]
    source = tmp_path / "hh.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    import_dataset(source, "hh", ws)
    ids = ws.load_pairs("hh")["pair_id"][:scored]
    rng = np.random.default_rng(3)
    save_score_table(ws, "hh", "sampled", "logprob", pa.table({
        "pair_id": ids, "chosen_logp": rng.normal(-10, 3, scored), "chosen_ntok": np.full(scored, 5),
        "rejected_logp": rng.normal(-11, 3, scored), "rejected_ntok": np.full(scored, 5),
        "truncated": np.zeros(scored, dtype=bool),
    }), model="test-policy", spec={"role": "policy"})
    return ws


def test_sampled_scoring_lists_only_the_scored_pairs(tmp_path):
    ws = sampled_workspace(tmp_path)
    at = app_test("explore_page.py", ws)
    at.run()
    no_errors(at)
    assert metrics(at)["Pairs"] == "60" and metrics(at)["Candidates"] == "20"
    caption = next(c.value for c in at.caption if "matching pairs" in c.value)
    assert caption.startswith("20 scored of 60 matching pairs; showing 20")
    assert "40 pairs without the margins 'implicit' needs are not listed" in caption and "Score page" in caption
    frame = at.dataframe[0].value
    assert len(frame) == 20 and frame["score"].notna().all() and frame["m_im"].notna().all()
    assert "m_ex" not in frame and "quadrant" not in frame  # no column that would be empty on every row
    # sorting by a column the unscored pairs lack a score for lists no unscored pair either
    at.selectbox(key="_sort_by").set_value("row").run()
    assert len(at.dataframe[0].value) == 20


def test_pair_card_explains_the_pick(ws):
    margins = load_margins(ws, DATASET, policy_fp=POLICY_FP)
    view = compute_view(margins, ExploreControls())
    at = app_test("explore_page.py", ws)
    at.run()
    no_errors(at)
    card = metrics(at)
    top = view.selection.positions[0]
    assert card["z(m_ex)"] == f"{view.terms['z(m_ex)'][top]:+.3f}"
    assert card["w·z(|m_im|)"] == f"{view.terms['w·z(|m_im|)'][top]:+.3f}"
    assert card["cut-off"] == f"{view.threshold:+.3f}" and card["score"] == f"{view.scores[top]:+.3f}"
    why = next(m.value for m in at.markdown if m.value.startswith("**Why this pair?**"))
    k = int(0.4 * len(margins))
    assert f"k = int(0.40 × {len(margins)}) = {k}" in why and f"**{view.threshold:+.3f}**" in why
    assert f"selected, rank 1 of {k}" in why and "z(m_ex) − w·z(|m_im|)" in why
    assert f"the {ordinal(k)} score" in why and [ordinal(i) for i in (1, 2, 3, 11, 12, 22, 102, 113)] == [
        "1st", "2nd", "3rd", "11th", "12th", "22nd", "102nd", "113th"]
    # lowest M_AP first: a pair below the cut-off, and by how much
    at.toggle(key="_sort_asc").set_value(True).run()
    why = next(m.value for m in at.markdown if m.value.startswith("**Why this pair?**"))
    low = int(np.nanargmin(view.scores))
    assert f"not selected: its score is {view.threshold - view.scores[low]:.3f} below the cut-off" in why
    assert any(c.value.startswith(f"Quadrant `{view.quadrants[low]}`: ") for c in at.caption)
    # the random baseline's score is a place in a seeded draw, and the card says so
    at.selectbox(key="_ctl_metric").set_value("random").run()
    why = next(m.value for m in at.markdown if m.value.startswith("**Why this pair?**"))
    assert "a seeded draw (seed 42)" in why and "w·z" not in why


def test_pick_reason_at_a_tie_and_without_a_score():
    # the worked example of core.selection.select.top_k: M_AP [3, 0.5, 0.5, -1, -3], k = 2, pairs 1 and 2 tie
    import pandas as pd

    frame = pd.DataFrame({"pair_id": [f"p{i}" for i in range(6)], "source_row": range(6),
                          "m_ex": [6, 4, 3, 2, 0, 1], "m_im": [0.0, -1.5, 1.0, 2.0, -3.0, np.nan],
                          "prompt_preview": ["q"] * 6, "flags": [[]] * 6})
    view = compute_view(frame, ExploreControls(ratio=0.4))
    assert view.selection.positions.tolist() == [0, 2] and view.threshold == pytest.approx(0.5)
    assert pick_reason(view, 2)["verdict"].startswith("selected, rank 2 of 2")
    assert "ties the cut-off" in pick_reason(view, 1)["verdict"]
    assert pick_reason(view, 3)["verdict"] == "not selected: its score is 1.500 below the cut-off"
    missing = pick_reason(view, 5)
    assert missing["score"] is None and missing["verdict"].startswith("not scored")
    assert pick_reason(view, 0)["terms"] == {"z(m_ex)": pytest.approx(1.5), "w·z(|m_im|)": pytest.approx(-1.5)}


def test_quadrant_meanings_match_the_definition(ws):
    """Each one-line meaning says high/low m_ex and high/low |m_im| exactly as quadrant_labels assigns them."""
    margins = load_margins(ws, DATASET, policy_fp=POLICY_FP)
    for axis in ("abs", "signed"):
        meanings = quadrant_meanings(axis)
        assert tuple(meanings) == QUADRANTS
        quads = quadrant_labels(margins["m_ex"], margins["m_im"], im_axis=axis)
        im = np.abs(margins["m_im"]) if axis == "abs" else margins["m_im"]
        for name, line in meanings.items():
            ex_word, im_word = line.split(":")[0].split(", ")
            inside = quads.labels == name
            assert inside.any()
            assert ex_word == ("high m_ex" if (margins["m_ex"][inside] > quads.ex_split).all() else "low m_ex")
            im_name = "|m_im|" if axis == "abs" else "m_im"
            assert im_word == (f"high {im_name}" if (im[inside] > quads.im_split).all() else f"low {im_name}")


def test_quadrant_names_are_explained_where_shown(ws):
    at = app_test("explore_page.py", ws)
    at.session_state["_explore_tab"] = "Contradictions"
    at.run()
    no_errors(at)
    assert any("n_negative_im" in d.value.columns for d in at.dataframe)
    legends = [c.value for c in at.caption if c.value.startswith("**Quadrants**")]
    assert len(legends) == 1  # under the count table
    assert all(f"`{name}` — {line}" in legends[0] for name, line in quadrant_meanings("abs").items())
    help_text = column_config(at.dataframe[0])["quadrant"]["help"]
    assert all(f"{name}: " in help_text for name in QUADRANTS)
    at.radio(key="_ctl_color").set_value("quadrant").run()
    legends = [c.value for c in at.caption if c.value.startswith("**Quadrants**")]
    # the scatter (above the tabs) now has one too, with the splits its lines are drawn at
    assert len(legends) == 2 and "medians: m_ex" in legends[0] and "medians: m_ex" not in legends[1]
    assert all(f"`{name}` — {line}" in legends[0] for name, line in quadrant_meanings("abs").items())


def test_demo_label_noise_is_listed_and_suspects_are_not_called_noise(demo):
    """On the demo the verifier is exact: its 39 flipped labels have m_ex < 0, and "large m_ex, m_im < 0" holds
    verified labels the policy gets wrong. The first list is the flipped labels, the second says what it is."""
    rows = [json.loads(line) for line in gzip.decompress(PAIRS_FILE.read_bytes()).splitlines()]
    flipped = {i for i, r in enumerate(rows) if r["label_flipped"]}
    margins = load_margins(Workspace(demo.root), DEMO_NAME, policy_fp=next(
        p.name for p in (demo.scores_dir / DEMO_NAME).iterdir() if p.name.startswith("logprob")))
    against, counts = label_contradictions(margins, top=100)
    assert set(against["row"]) == flipped and counts["n"] == len(flipped) == 39
    assert counts["both"] == int(((margins["m_ex"] < 0) & (margins["m_im"] < 0)).sum())
    assert against["m_ex"].is_monotonic_increasing
    at = app_test("explore_page.py", demo)
    at.session_state["_explore_tab"] = "Contradictions"
    at.run()
    no_errors(at)
    shown = next(d.value for d in at.dataframe if list(d.value.columns) == list(against.columns))
    assert set(shown["row"]) == flipped
    suspects = next(d.value for d in at.dataframe if "suspicion" in d.value.columns)
    assert not set(suspects["row"]) & flipped and (suspects["m_ex"] >= 0.95).all()
    words = texts(at)
    assert "**Noise suspects**" not in words
    assert "where it is an exact check, such as the demo's verifier, these labels are right" in words


def test_no_debug_line_and_the_time_goes_to_the_log(ws, caplog):
    caplog.set_level(logging.DEBUG, logger="marginlens.dashboard.explore")
    at = app_test("explore_page.py", ws)
    at.run()
    no_errors(at)
    assert not any("server time" in c.value for c in at.caption)
    assert at.session_state["_explore_server_s"] > 0
    assert any(r.name == "marginlens.dashboard.explore" and "script run" in r.getMessage() for r in caplog.records)


def test_empty_states_name_the_page_not_a_command(tmp_path):
    from helpers_app import records
    from marginlens.core.data.ingest import import_dataset

    ws = Workspace(tmp_path / "workspace")
    rows = [{k: v for k, v in r.items() if not k.startswith("score_")} for r in records(20)]
    source = tmp_path / "bare.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    import_dataset(source, "bare", ws)
    for tab in ("Pair", "Contradictions"):
        at = app_test("explore_page.py", ws)
        at.session_state["_explore_tab"] = tab
        at.run()
        no_errors(at)
        hints = [i.value for i in at.info]
        assert hints and all("Score page" in h for h in hints), hints
        assert not any("marginlens " in h or "--" in h or "`" in h for h in hints), hints
