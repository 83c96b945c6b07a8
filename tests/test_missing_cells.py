"""Every table the pages show draws a missing value as "—": the browser draws st.dataframe's `placeholder` in
an empty cell whatever a pandas Styler says, and without one it writes "None", which reads as a value."""

from __future__ import annotations

import pytest
from helpers_app import app_test, no_errors
from marginlens.app.widgets import MISSING
from marginlens.core.demo.build import ensure_demo
from marginlens.core.workspace import Workspace


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("demo") / "workspace")
    ensure_demo(ws)
    return ws


def placeholders(at) -> dict[str, str]:
    """Each table's first columns -> the placeholder the browser draws in its missing cells."""
    return {",".join(map(str, d.value.columns[:3])): d.proto.placeholder for d in at.dataframe}


# (the Audit page's tables need an audit: they go through the same widgets.table)
@pytest.mark.parametrize("page", ["data_page.py", "score_page.py", "export_page.py"])
def test_page_tables_draw_missing_as_a_dash(demo, page):
    at = app_test(page, demo)
    at.run()
    no_errors(at)
    shown = placeholders(at)
    assert shown and set(shown.values()) == {MISSING}, shown


def test_explore_tables_draw_missing_as_a_dash_but_the_unranked_blank(demo):
    at = app_test("explore_page.py", demo)
    at.session_state["_explore_tab"] = "Contradictions"
    at.run()
    no_errors(at)
    shown = placeholders(at)
    pairs = [cols for cols in shown if cols.startswith("rank,score")]
    # the pair table leaves a pair outside the top-k without a rank: a blank, not a dash
    assert len(pairs) == 1 and shown.pop(pairs[0]) == ""
    # quadrants, correlations and both lists of contradicted labels (the overlap is a heatmap)
    assert len(shown) >= 4 and set(shown.values()) == {MISSING}, shown
