"""The LLM judge's vote against a pair's label, as a margin-frame column: one of the cleaning rule's signals
(core.selection.signal_cleaning).

    judge_rejected  1.0 where some judge model, under one prompt version, preferred the rejected answer in both
                    orders (AB and BA, both answers valid); 0.0 everywhere else, unjudged pairs included

The verdicts are the audit's store (core.verdicts: audits/DATASET/verdicts.jsonl, a re-ask superseding the
answer it asked again). A pair never judged counts as "the judge does not vote against it", so the rule still
runs on a dataset no one has audited.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from marginlens.core.verdicts import VerdictStore, verdicts_path
from marginlens.core.workspace import Workspace

JUDGE_COLUMN = "judge_rejected"


def rejected_both_orders(records: list[dict[str, Any]]) -> set[str]:
    """Pair ids some (judge model, prompt version) preferred the rejected answer for in both orders."""
    orders: dict[tuple[str, str, str], dict[str, str | None]] = {}
    for r in records:
        prefers = r.get("prefers") if r.get("valid") else None
        orders.setdefault((r["pair_id"], r["judge_model"], r["prompt_version"]), {})[r["order"]] = prefers
    return {key[0] for key, got in orders.items() if got.get("AB") == "rejected" and got.get("BA") == "rejected"}


def judge_rejected(ws: Workspace, dataset: str, pair_ids: pa.Array) -> np.ndarray:
    """The JUDGE_COLUMN values for `pair_ids` (the frame's, in its order); all 0.0 when there are no verdicts."""
    out = np.zeros(len(pair_ids), dtype=np.float64)
    if not verdicts_path(ws, dataset).is_file():
        return out
    against = rejected_both_orders(VerdictStore.for_dataset(ws, dataset).records())
    if against:
        hit = pc.is_in(pair_ids, value_set=pa.array(sorted(against), type=pair_ids.type))  # hashed in C
        out[hit.to_numpy(zero_copy_only=False)] = 1.0
    return out
