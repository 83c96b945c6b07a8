"""Explore: the page through AppTest, and its logic (app/explore_view.py) directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_app import DATASET, POLICY_FP, XSS_PROMPT, app_test, build_workspace, metrics, no_errors
from marginlens.app.explore_brush import brush_from_event, brush_mask, restrict_selection
from marginlens.app.explore_figures import hover_texts, scatter_figure
from marginlens.app.explore_shift import margin_shift, shift_figure
from marginlens.app.explore_tables import overlap_matrix, table_frame
from marginlens.app.explore_view import ExploreControls, compute_view
from marginlens.core.selection.compare import compare_metrics
from marginlens.core.selection.margin_sources import margin_sources
from marginlens.core.selection.margins import load_margins

N = 201  # 200 ordinary pairs + the adversarial one


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("explore") / "workspace", n=N - 1)


@pytest.fixture(scope="module")
def margins(ws):
    return load_margins(ws, DATASET, policy_fp=POLICY_FP)


def caption_texts(at) -> str:
    return "\n".join(c.value for c in at.caption)


def scatter_spec(at) -> dict:
    charts = at.get("plotly_chart")
    assert charts, "no scatter on the page"
    return json.loads(charts[0].proto.spec)


def test_page_renders_counts_scatter_table_and_viewer(ws, margins):
    at = app_test("explore_page.py", ws)
    at.run()
    no_errors(at)
    m = metrics(at)
    assert m["Pairs"] == f"{N:,}"
    assert m["Selected (top-k)"] == str(int(0.4 * N))
    spec = scatter_spec(at)
    trace = spec["data"][0]
    assert trace["type"] == "scattergl"
    ids = {row[0] for row in trace["customdata"]}
    assert ids == set(margins["pair_id"])  # every point carries its pair id
    assert len(spec["layout"]["shapes"]) == 3  # m_ex split + the |m_im| band
    assert at.dataframe[0].value["pair_id"].tolist()[0] in ids
    assert any(el.value.startswith("**Pair**") for el in at.markdown)


def test_controls_change_counts_at_once(ws):
    at = app_test("explore_page.py", ws)
    at.run()
    at.slider(key="_ctl_ratio").set_value(0.1).run()
    no_errors(at)
    assert metrics(at)["Selected (top-k)"] == str(int(0.1 * N))
    assert at.session_state["explore_controls"]["ratio"] == 0.1  # kept for the Export page
    at.selectbox(key="_ctl_metric").set_value("explicit").run()
    table = at.dataframe[0].value
    # sorted by the explicit score: the largest m_ex first
    assert table["m_ex"].iloc[0] == pytest.approx(table["m_ex"].max())
    at.text_area(key="_ctl_filters").input("m_ex>=0\nthis is not a filter").run()
    assert metrics(at)["Candidates"] == str(int((load_margins(ws, DATASET, policy_fp=POLICY_FP)["m_ex"] >= 0).sum()))
    assert any("cannot read filter" in e.value for e in at.error)  # the bad line is reported, not applied


def test_untrusted_texts_render_as_code_only(ws):
    at = app_test("explore_page.py", ws)
    at.run()
    at.toggle(key="_sort_asc").set_value(True).run()  # lowest M_AP first: the adversarial pair
    no_errors(at)
    codes = [c.value for c in at.code]
    assert XSS_PROMPT in codes
    assert any(c.startswith("<img src=") for c in codes)
    assert any(c.startswith("![tracker](") for c in codes)
    rendered = "\n".join(el.value for el in [*at.markdown, *at.caption])
    assert "<img" not in rendered and "<script" not in rendered and "](http" not in rendered


def test_brush_filters_the_table(ws, margins):
    box = {"kind": "box", "x": [0.0, 4.0], "y": [-0.5, 0.5], "pair_ids": []}
    at = app_test("explore_page.py", ws)
    at.session_state["explore_brush"] = {"dataset": DATASET, "brush": box}
    at.run()
    no_errors(at)
    inside = brush_mask(margins, box)
    assert any(el.value.startswith("**Scatter selection:**") and f"{int(inside.sum()):,} pairs" in el.value
               for el in at.markdown)
    shown = at.dataframe[0].value
    assert set(shown["pair_id"]) <= set(margins["pair_id"][inside])
    # a brush from an earlier visit is drawn as a ring trace, since the fresh chart does not show it
    assert any(t["name"] == "in scatter selection" for t in scatter_spec(at)["data"])


def test_contradiction_tab_lists_suspects(ws, margins):
    at = app_test("explore_page.py", ws)
    at.session_state["_explore_tab"] = "Contradictions"
    at.run()
    no_errors(at)
    frames = [d.value for d in at.dataframe]
    suspects = next(f for f in frames if "suspicion" in f.columns)
    xss_id = margins.loc[margins["prompt_preview"] == XSS_PROMPT, "pair_id"].item()
    assert suspects["pair_id"].iloc[0] == xss_id
    # every metric the frame runs, in registry order: the paper's four, then the published rules whose columns
    # the frame has (the registry grows, so the list is read from it)
    runnable = list(margin_sources(margins).runnable)
    assert runnable[:4] == ["map", "explicit", "implicit", "random"] and "m_im_dpo" not in margins.attrs
    # all of them are compared, the paper's four shown until the user picks more: a matrix of twelve was cut off
    (picker,) = [m for m in at.multiselect if m.label == "Metrics compared"]
    assert list(picker.options) == runnable and list(picker.value) == runnable[:4]

    def overlap_spec() -> dict:
        specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
        (spec,) = [s for s in specs if s["data"] and s["data"][0]["type"] == "heatmap"]
        return spec

    def overlap() -> dict:
        return overlap_spec()["data"][0]

    def correlations() -> set[tuple[str, str]]:
        table = next(d.value for d in at.dataframe if "spearman" in d.value.columns)
        return set(zip(table["metric_a"], table["metric_b"], strict=True))

    assert overlap()["x"] == runnable[:4] and overlap()["z"][0][0] == int(0.4 * N)  # diagonal = k
    assert len(correlations()) == 6
    picker.set_value(runnable).run()
    no_errors(at)
    heat = overlap()
    assert heat["x"] == heat["y"] == runnable and len(correlations()) == len(runnable) * (len(runnable) - 1) // 2
    matrix = overlap_matrix(compare_metrics(margins, ratio=0.4))
    assert heat["z"] == matrix.to_numpy().tolist()  # the counts the table held
    assert "width" not in overlap_spec()["layout"]  # it fills its column, however many metrics


# ---- logic, directly --------------------------------------------------------------------------------

def test_brush_from_streamlit_events():
    assert brush_from_event(None) is None
    assert brush_from_event({"points": [], "box": [], "lasso": []}) is None
    box = brush_from_event({"points": [{"customdata": ["id1", "x"]}], "box": [{"x": [2, -1], "y": [3, 1]}],
                            "lasso": []})
    assert box == {"kind": "box", "x": [-1.0, 2.0], "y": [1.0, 3.0], "pair_ids": ["id1"]}
    lasso = brush_from_event({"points": [], "box": [], "lasso": [{"x": [0, 1, 1], "y": [0, 0, 1]}]})
    assert lasso["kind"] == "lasso" and len(lasso["x"]) == 3
    points = brush_from_event({"points": [{"customdata": ["a", ""]}, {"customdata": ["b", ""]}], "box": [],
                               "lasso": []})
    assert points == {"kind": "points", "x": [], "y": [], "pair_ids": ["a", "b"]}


def test_lasso_and_box_masks_agree_with_geometry(margins):
    x, y = margins["m_ex"].to_numpy(), margins["m_im"].to_numpy()
    square = {"kind": "lasso", "x": [0, 4, 4, 0], "y": [-0.5, -0.5, 0.5, 0.5], "pair_ids": []}
    box = {"kind": "box", "x": [0, 4], "y": [-0.5, 0.5], "pair_ids": []}
    expected = (x > 0) & (x < 4) & (y > -0.5) & (y < 0.5)
    assert (brush_mask(margins, square) == expected).all()
    assert (brush_mask(margins, box) == expected).all()
    triangle = {"kind": "lasso", "x": [0, 4, 0], "y": [-1, -1, 1], "pair_ids": []}
    tri = brush_mask(margins, triangle)
    assert tri.sum() < expected.sum() or not expected.any()
    assert (x[tri] + 2 * y[tri] <= 4 + 1e-9).all()  # inside the hypotenuse from (4,-1) to (0,1)
    ids = list(margins["pair_id"][:3])
    assert brush_mask(margins, {"kind": "points", "x": [], "y": [], "pair_ids": ids}).sum() == 3


def test_restrict_selection_records_the_brush(margins):
    view = compute_view(margins, ExploreControls(ratio=0.5))
    box = {"kind": "box", "x": [0.0, 4.0], "y": [-0.5, 0.5], "pair_ids": []}
    inside = brush_mask(margins, box)
    cut = restrict_selection(view.selection, inside, box)
    assert set(cut.positions) == set(view.selection.positions) & set(np.flatnonzero(inside))
    assert cut.pair_ids == [p for p in view.selection.pair_ids if p in set(margins["pair_id"][inside])]
    assert "scatter selection" in cut.warnings[-1]


def test_table_sorts_over_all_pairs_and_truncates(margins):
    view = compute_view(margins, ExploreControls())
    frame, counts = table_frame(margins, view, None, "m_im", ascending=True, limit=5)
    assert counts == {"matching": N, "scored": N} and len(frame) == 5
    assert frame["m_im"].iloc[0] == pytest.approx(margins["m_im"].min())
    assert frame["prompt"].str.len().max() <= 80
    ranked, _ = table_frame(margins, view, None, "rank", ascending=True, limit=3)
    assert ranked["rank"].tolist() == [1, 2, 3]


def test_first_rows_worked_example():
    from marginlens.app.explore_tables import first_rows

    key, rows = np.array([3, np.nan, 1, 3, 2]), np.arange(5)
    assert first_rows(key, rows, ascending=False, limit=2).tolist() == [0, 3]
    assert first_rows(key, rows, ascending=False, limit=5).tolist() == [0, 3, 4, 2, 1]
    rng = np.random.default_rng(0)
    for _ in range(200):  # equal to a stable full sort, missing values last, whatever the limit
        key = rng.integers(0, 6, 40).astype(float)
        key[rng.random(40) < 0.2] = np.nan
        rows = np.flatnonzero(rng.random(40) < 0.7)
        ascending, limit = bool(rng.integers(0, 2)), int(rng.integers(1, 45))
        k = key[rows]
        full = rows[np.lexsort((np.where(np.isnan(k), 0, k if ascending else -k), np.isnan(k)))]
        assert first_rows(key, rows, ascending, limit).tolist() == full[:limit].tolist()


def test_scatter_samples_large_sets_and_escapes_hover(margins):
    view = compute_view(margins, ExploreControls())
    fig, drawn = scatter_figure(margins, view, ExploreControls(max_points=50))
    density, points = fig["data"]
    assert drawn == 50 and points["type"] == "scattergl" and len(points["x"]) == 50
    # above max_points every pair is still on the chart, binned: the density cells count all N
    assert density["type"] == "heatmap" and np.nansum(10 ** density["z"]) == pytest.approx(N)
    again, _ = scatter_figure(margins, view, ExploreControls(max_points=50))
    assert list(points["customdata"][:, 0]) == list(again["data"][1]["customdata"][:, 0])  # stable
    assert set(points["customdata"][:, 0]) <= set(margins["pair_id"])
    by_selection, _ = scatter_figure(margins, view, ExploreControls(color_by="selection"))
    assert [t["type"] for t in by_selection["data"]] == ["scattergl", "scattergl"]  # all drawn: no density
    assert sum(len(t["x"]) for t in by_selection["data"]) == N
    assert len(by_selection["data"][1]["x"]) == view.selection.k
    hover = hover_texts(margins["prompt_preview"])
    xss = hover[margins["prompt_preview"].to_numpy() == XSS_PROMPT][0]
    assert "<script>" not in xss and "&lt;script&gt;" in xss


def test_overlap_matrix_is_symmetric(margins):
    report = compare_metrics(margins, ratio=0.3)
    matrix = overlap_matrix(report)
    assert (matrix.to_numpy() == matrix.to_numpy().T).all()
    assert matrix.loc["explicit", "explicit"] == report.k


def test_dataset_without_policy_scores_falls_back_to_explicit(tmp_path):
    from helpers_app import records
    from marginlens.core.data.ingest import import_dataset
    from marginlens.core.workspace import Workspace

    ws = Workspace(tmp_path / "workspace")
    source = tmp_path / "plain.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records(30)), encoding="utf-8")
    import_dataset(source, "plain", ws)
    at = app_test("explore_page.py", ws)
    at.run()
    no_errors(at)
    assert len(at.info) == 1 and "No implicit margin yet" in at.info[0].value  # said once
    assert metrics(at)["Selected (top-k)"] == "12"
    table = at.dataframe[0].value
    assert table["m_ex"].iloc[0] == pytest.approx(table["m_ex"].max())


def test_margin_shift_counts_sign_flips(margins):
    after = margins.copy()
    after["m_im"] = margins["m_im"] + 1.0
    before_m = margins["m_im"].to_numpy()
    shift = margin_shift(margins, after)
    assert shift.counts["pairs"] == N and shift.counts["grew"] == N
    assert shift.counts["to_chosen"] == int(((before_m < 0) & (before_m > -1)).sum()) > 0
    assert shift.counts["to_rejected"] == 0 and shift.counts["mean_change"] == pytest.approx(1.0)
    only = np.zeros(N, dtype=bool)
    only[:10] = True
    assert margin_shift(margins, after, only).counts["pairs"] == 10


def test_before_after_tab_compares_two_policy_tables(tmp_path):
    from helpers_app import write_policy

    ws = build_workspace(tmp_path / "workspace", n=30)
    write_policy(ws, DATASET, seed=7, fingerprint="logprob-after")
    at = app_test("explore_page.py", ws)
    at.session_state["explore_scorers"] = {"dataset": DATASET, "policy": POLICY_FP, "reference": None,
                                           "reward": None, "beta": 0.1, "compare": "logprob-after"}
    at.session_state["_explore_tab"] = "Before / after"
    at.run()
    no_errors(at)
    before = load_margins(ws, DATASET, policy_fp=POLICY_FP)["m_im"].to_numpy()
    after = load_margins(ws, DATASET, policy_fp="logprob-after")["m_im"].to_numpy()
    m = metrics(at)
    assert m["Pairs compared"] == "31"
    assert m["Flipped to chosen"] == str(int(((before < 0) & (after > 0)).sum()))
    assert m["Flipped to rejected"] == str(int(((before > 0) & (after < 0)).sum()))
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    shift = next(s for s in specs if s["layout"]["xaxis"]["title"]["text"] == "m_im before")
    assert [t["name"] for t in shift["data"]] == ["same sign", "sign flipped"]
    figure = shift_figure(margin_shift(load_margins(ws, DATASET, policy_fp=POLICY_FP),
                                       load_margins(ws, DATASET, policy_fp="logprob-after")))
    assert len(figure["data"][1]["x"]) == int(m["Flipped to chosen"]) + int(m["Flipped to rejected"])
    assert sum(len(t["x"]) for t in figure["data"]) == 31


def unscored_workspace(tmp_path, policy: bool):
    """HH-RLHF-like pairs without explicit scores of their own, scored by a policy only when `policy`."""
    from helpers_app import records, write_policy
    from marginlens.core.data.ingest import import_dataset
    from marginlens.core.workspace import Workspace

    ws = Workspace(tmp_path / "workspace")
    rows = [{k: v for k, v in r.items() if not k.startswith("score_")} for r in records(30)]
    source = tmp_path / "hh.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    import_dataset(source, "hh", ws)
    if policy:
        write_policy(ws, "hh")
    return ws


def test_dataset_with_only_implicit_margins_opens_on_what_works(tmp_path):
    ws = unscored_workspace(tmp_path, policy=True)
    at = app_test("explore_page.py", ws)
    at.session_state["_explore_tab"] = "Histograms"
    at.run()
    no_errors(at)
    assert len(at.info) == 1 and at.info[0].value.startswith("No explicit margin")
    assert "the implicit, random and selective_dpo metrics can" in at.info[0].value
    # the dashboard's words: the page and the choice that gets the margin, no command
    assert "On the Score page" in at.info[0].value and "LLM rating" in at.info[0].value
    assert "marginlens" not in at.info[0].value and "`" not in at.info[0].value
    options = at.selectbox(key="_ctl_metric").options  # the registry grows: rules that need m_ex are never offered
    assert options[:2] == ["implicit: -z(|m_im|)", "random (seeded)"] and not any("m_ex" in o for o in options)
    assert at.session_state["explore_controls"]["metric"] == "implicit"
    assert metrics(at)["Selected (top-k)"] == "12" and metrics(at)["Missing margins"] == "0"
    reward = at.selectbox(key="_scorer_reward")
    assert reward.options == ["none (the dataset has no scores)"]
    assert not any("dataset scores" in c.value or "m_ex from" in c.value for c in at.caption)
    assert any(c.value.startswith("no explicit margin") for c in at.caption)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert titles == ["m_im (implicit, signed)", "implicit score"]  # no empty m_ex histogram, no scatter
    table = at.dataframe[0].value
    assert table["m_im"].abs().iloc[0] == pytest.approx(table["m_im"].abs().min())  # smallest |m_im| first
    at.selectbox(key="_ctl_metric").set_value("random").run()
    no_errors(at)
    assert at.session_state["explore_controls"]["metric"] == "random" and len(at.info) == 1


def test_map_with_a_constant_explicit_margin_ranks_like_implicit(tmp_path):
    # what the note on a dataset without m_ex promises: z of a constant is 0, so M_AP = -w z(|m_im|)
    ws = unscored_workspace(tmp_path, policy=True)
    frame = load_margins(ws, "hh", policy_fp=POLICY_FP)
    constant = frame.assign(m_ex=1.0)
    for weight in (1.0, 2.5):
        by_map = compute_view(constant, ExploreControls(metric="map", weight=weight)).selection
        by_implicit = compute_view(frame, ExploreControls(metric="implicit")).selection
        assert by_map.positions.tolist() == by_implicit.positions.tolist()
        assert any("constant" in w for w in by_map.warnings)


def test_dataset_without_any_margin_ranks_at_random_without_errors(tmp_path):
    ws = unscored_workspace(tmp_path, policy=False)
    at = app_test("explore_page.py", ws)
    at.session_state["_explore_tab"] = "Contradictions"
    at.run()
    no_errors(at)
    assert len(at.info) == 2 and at.info[0].value.startswith("No explicit margin")
    assert "No implicit margin yet" in at.info[0].value  # one box says what is missing
    assert "have both margins" in at.info[1].value  # the tab's own line, consistent with the note
    assert at.selectbox(key="_ctl_metric").options == ["random (seeded)"]
    assert metrics(at)["Selected (top-k)"] == "12"
    assert not at.get("plotly_chart")
    at.session_state["_explore_tab"] = "Histograms"
    at.run()
    no_errors(at)
    assert [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")] == ["random score"]


def test_no_traps_in_the_sidebar_table_and_viewer(ws, margins):
    """Issue 12: help that renders as written, names that say what a control does, no literal "None"."""
    from streamlit import dataframe_util

    at = app_test("explore_page.py", ws)
    at.run()
    at.toggle(key="_sort_asc").set_value(True).run()  # lowest M_AP first: the adversarial pair, m_im << 0
    no_errors(at)
    # filter examples in code spans: `text~paris, prompt~capital` rendered as strikethrough before
    filters_help = at.text_area(key="_ctl_filters").help
    assert "`text~paris`" in filters_help and "`prompt~capital`" in filters_help
    stage = at.radio(key="_ctl_stage")
    assert stage.label == "Apply filters" and stage.label != at.text_area(key="_ctl_filters").label
    assert stage.options == ["before ranking (choose candidates)", "after ranking (prune the top-k)"]
    assert "Before ranking" in stage.help and "After ranking" in stage.help
    weight_help = at.slider(key="_ctl_weight").help
    assert "implicit-margin term" in weight_help and "w = 1" in weight_help and "not learned yet" in weight_help
    assert "contradicts most" in at.toggle(key="_ctl_signed").help
    captions = caption_texts(at)
    assert "z-scores" in captions and "nats/token" in captions  # the score scale, next to the chart
    # the viewer says which answer the policy prefers; the quadrant name does not claim "learned"
    header = next(el.value for el in at.markdown if el.value.startswith("**Pair**"))
    assert "policy prefers the rejected answer" in header and "`policy_decided`" in header
    # an unselected pair's rank is blank (not "None", not a dash), while the data stays numeric (it sorts as numbers)
    table = at.dataframe[0]
    shown = dataframe_util.convert_arrow_bytes_to_pandas_df(table.proto.arrow_data.styler.display_values)
    assert (shown == "None").sum().sum() == 0 and (shown["rank"] == "").any()
    assert not shown["rank"].isin(["—", "<NA>", "nan"]).any()
    # the browser draws a missing cell as the table's placeholder, not the Styler's text: "None" unless set
    assert table.proto.placeholder == ""
    assert str(table.value["rank"].dtype) == "Int64" and table.value["rank"].isna().any()
    assert "source_row" not in at.selectbox(key="_sort_by").options
    at.selectbox(key="_sort_by").set_value("row").run()
    rows = at.dataframe[0].value["row"].tolist()
    assert rows == sorted(rows)


def test_histograms_have_a_legend(margins):
    from marginlens.app.explore_figures import histogram_figure

    view = compute_view(margins, ExploreControls())
    fig = histogram_figure(view.scores, view.selected, "map score", {})
    assert fig.layout.showlegend is True
    assert [t.name for t in fig.data] == ["all pairs", "selected (top-k)"]
