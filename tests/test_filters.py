"""Filters: parsing, each kind, and composition with selection before or after ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_data import conversational_records, make_dataset, random_logprobs
from marginlens.core.data.pairs import load_texts
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.filters import Filter, filter_mask, parse_filter
from marginlens.core.selection.margins import load_margins
from marginlens.core.selection.select import SelectionSpec, select
from marginlens.core.workspace import Workspace


def test_parse_filter():
    assert parse_filter("m_ex>=0.5") == Filter("m_ex", ">=", 0.5)
    assert parse_filter("abs_m_im < 1e-1") == Filter("abs_m_im", "<", 0.1)
    assert parse_filter("flagged=false") == Filter("flagged", "==", False)
    assert parse_filter("text~Paris") == Filter("any", "~", "Paris")
    assert parse_filter("prompt~capital of") == Filter("prompt", "~", "capital of")
    q = parse_filter("quadrant=high_potential,ambiguous;ex=0.5;im=0.2")
    assert q == Filter("quadrant", "in", ["high_potential", "ambiguous"], 0.5, 0.2)
    for bad in ("m_ex", "m_ex>=abc", "flagged>1", "foo~x", "quadrant=x;zz=1"):
        with pytest.raises(MarginLensError):
            parse_filter(bad)


def synthetic() -> pd.DataFrame:
    return pd.DataFrame({
        "pair_id": [f"p{i}" for i in range(8)],
        "m_ex": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "m_im": [-3.0, 2.0, -1.0, 0.5, 0.0, -0.2, 4.0, 1.0],
        "chosen_chars": [10, 200, 30, 40, 5000, 60, 70, 80],
        "flagged": [False, True, False, False, False, True, False, False],
    })


def test_numeric_bool_and_quadrant_masks():
    df = synthetic()
    assert filter_mask(df, [parse_filter("m_ex>=2"), parse_filter("m_ex<6")]).nonzero()[0].tolist() == [2, 3, 4, 5]
    assert filter_mask(df, [parse_filter("abs_m_im<=1")]).nonzero()[0].tolist() == [2, 3, 4, 5, 7]
    assert filter_mask(df, [parse_filter("chosen_chars<=1000"), parse_filter("flagged=false")]).sum() == 5
    # medians: m_ex 3.5, |m_im| 1.0 -> high m_ex & |m_im| <= 1: rows 4, 5, 7
    mask = filter_mask(df, [parse_filter("quadrant=high_potential")])
    assert mask.nonzero()[0].tolist() == [4, 5, 7]
    with pytest.raises(MarginLensError, match="not a numeric column"):
        filter_mask(df, [parse_filter("nope>1")])
    with pytest.raises(MarginLensError, match="unknown quadrant"):
        filter_mask(df, [Filter("quadrant", "in", ["nowhere"])])
    with pytest.raises(MarginLensError, match="need the pair texts"):
        filter_mask(df, [parse_filter("text~x")])


def test_before_and_after_ranking_differ_and_are_recorded():
    rng = np.random.default_rng(0)
    n = 100
    df = pd.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "m_ex": rng.normal(size=n),
                       "m_im": rng.normal(size=n)})
    f = parse_filter("m_ex>=0")
    before = select(df, SelectionSpec(metric="map", filters=[f], filter_stage="before"))
    after = select(df, SelectionSpec(metric="map", filters=[f], filter_stage="after"))
    cand = df["m_ex"].to_numpy() >= 0
    assert before.n_candidates == cand.sum() and before.k == int(0.4 * cand.sum())
    assert len(before.positions) == before.k and cand[before.positions].all()
    # before: z-scores over the filtered candidates only
    sub = df[cand]
    expect = select(sub.reset_index(drop=True), SelectionSpec(metric="map"))
    assert set(np.flatnonzero(cand)[expect.positions].tolist()) == set(before.positions.tolist())
    # after: the unfiltered top-40 pruned by the filter
    full = select(df, SelectionSpec(metric="map"))
    assert set(after.positions.tolist()) == {p for p in full.positions.tolist() if cand[p]}
    assert after.spec.to_dict()["filter_stage"] == "after"
    assert after.spec.to_dict()["filters"] == [{"field": "m_ex", "op": ">=", "value": 0.0}]


def test_text_search_and_resolved_quadrant_thresholds(tmp_path):
    ws = Workspace(tmp_path / "ws")
    make_dataset(ws, "conv", conversational_records(20), tmp_path)
    random_logprobs(ws, "conv")
    frame = load_margins(ws, "conv", policy_fp="pol")
    texts = load_texts(ws, "conv")
    # "colour 1" matches rows 1, 10..19 in the prompt (case-insensitive); "GREENGREENGREEN" only i % 3 == 2
    mask = filter_mask(frame, [parse_filter("prompt~COLOUR 1")], texts)
    assert mask.nonzero()[0].tolist() == [1, *range(10, 20)]
    mask = filter_mask(frame, [parse_filter("rejected~greengreengreen")], texts)
    assert mask.nonzero()[0].tolist() == [i for i in range(20) if i % 3 == 2]
    assert filter_mask(frame, [parse_filter("text~be brief")], texts).all()  # system turn is searched too
    sel = select(frame, SelectionSpec(metric="map", filters=[parse_filter("quadrant=high_potential")]), texts)
    recorded = sel.spec.to_dict()["filters"][0]
    assert recorded["ex_split"] == pytest.approx(float(np.median(frame["m_ex"])))
    assert recorded["im_split"] == pytest.approx(float(np.median(np.abs(frame["m_im"]))))


def test_a_filter_saved_under_the_old_quadrant_name_still_parses():
    from marginlens.core.selection.filters import parse_filter

    assert parse_filter("quadrant=already_learned,ambiguous").value == ["policy_decided", "ambiguous"]
