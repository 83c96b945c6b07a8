"""Which score tables the dashboard and CLI use when the user names none."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from helpers_data import make_dataset, standard_records
from marginlens.core.atomic import read_json, write_json
from marginlens.core.scoring.score_tables import save_score_table, table_dir
from marginlens.core.selection.margins import default_scorers


def _table(ws, name, fp, role, created, dataset_fp):
    ids = ws.load_pairs(name)["pair_id"]
    n = len(ids)
    table = pa.table({"pair_id": ids, "chosen_logp": -np.ones(n), "chosen_ntok": np.ones(n, dtype=np.int64),
                      "rejected_logp": -np.ones(n), "rejected_ntok": np.ones(n, dtype=np.int64),
                      "truncated": np.zeros(n, dtype=bool)})
    save_score_table(ws, name, fp, "logprob", table, model=fp, spec={"role": role, "dataset_fingerprint": dataset_fp})
    manifest_path = table_dir(ws, name, fp) / "manifest.json"
    write_json(manifest_path, {**read_json(manifest_path), "created": created})


def test_policy_role_wins_over_a_newer_reference_table_and_stale_tables_are_skipped(ws, tmp_path):
    make_dataset(ws, "d", standard_records(6, scores=False), tmp_path)
    current = ws.dataset_manifest("d")["fingerprint"]
    _table(ws, "d", "policy-old", "policy", "2026-01-01T00:00:00Z", current)
    _table(ws, "d", "reference-new", "reference", "2026-01-02T00:00:00Z", current)
    assert default_scorers(ws, "d")["policy"] == "policy-old"
    _table(ws, "d", "policy-stale", "policy", "2026-01-03T00:00:00Z", "an-earlier-import")
    assert default_scorers(ws, "d")["policy"] == "policy-old"
    _table(ws, "d", "policy-new", "policy", "2026-01-04T00:00:00Z", current)
    assert default_scorers(ws, "d")["policy"] == "policy-new"
