"""Counts in the messages users read carry thousands separators ("30 of 2,312 pairs scored")."""

from __future__ import annotations

import numpy as np
from helpers_data import hh_records, make_dataset, save_logprobs
from marginlens.core.selection.margins import default_margins
from marginlens.core.selection.select import SelectionSpec, select

N, SCORED = 1_234, 30


def test_sampled_scoring_warning_groups_thousands(ws, tmp_path):
    make_dataset(ws, "hh", hh_records(N), tmp_path)
    ids = list(ws.load_pairs("hh")["pair_id"])[:SCORED]
    rng = np.random.default_rng(0)
    save_logprobs(ws, "hh", "pol", ids, -rng.uniform(1, 60, SCORED), rng.integers(1, 30, SCORED),
                  -rng.uniform(1, 60, SCORED), rng.integers(1, 30, SCORED))
    selection = select(default_margins(ws, "hh"), SelectionSpec(metric="implicit", count=2_000))
    assert "30 of 1,234 pairs scored: selecting from the scored pairs" in selection.warnings
    assert "count 2,000 exceeds the 30 candidate pairs; selecting all" in selection.warnings
