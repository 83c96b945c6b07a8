"""Length and score statistics of an imported dataset, for `marginlens info` and the Data page."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from marginlens.core.workspace import Workspace


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    q = np.percentile(values, [50, 95])
    return {"min": float(values.min()), "median": float(q[0]), "mean": float(values.mean()),
            "p95": float(q[1]), "max": float(values.max())}


def _prompt_chars(prompt: pa.ChunkedArray) -> np.ndarray:
    prompt = prompt.combine_chunks()
    lengths = pc.utf8_length(pc.struct_field(pc.list_flatten(prompt), "content")).to_numpy(zero_copy_only=False)
    # sum the per-message lengths back into one total per row
    return np.add.reduceat(lengths, prompt.offsets.to_numpy()[:-1]) if len(lengths) else np.zeros(len(prompt))


def dataset_stats(ws: Workspace, name: str, tokenizer: Any | None = None, token_sample: int = 2000) -> dict[str, Any]:
    """Row counts, character lengths, score columns and flags; token lengths when given a tokenizer."""
    manifest = ws.dataset_manifest(name)
    table = ws.load_pairs(name).data.table
    stats: dict[str, Any] = {
        "name": name,
        "rows": table.num_rows,
        "format": manifest["format"],
        "source": manifest["source"],
        "rejected": manifest["rows"]["rejected"],
        "rejects_by_reason": manifest.get("rejects", {}),
        "chars": {
            "prompt": _summary(_prompt_chars(table.column("prompt"))),
            "chosen": _summary(pc.utf8_length(table.column("chosen")).to_numpy()),
            "rejected": _summary(pc.utf8_length(table.column("rejected")).to_numpy()),
        },
        "turns": _summary(pc.list_value_length(table.column("prompt")).to_numpy()),
        "score_columns": [c for c in ("score_chosen", "score_rejected") if table.column(c).null_count < table.num_rows],
        "flags": {d["values"]: d["counts"] for d in pc.value_counts(pc.list_flatten(table.column("flags"))).to_pylist()},
    }
    if stats["score_columns"]:
        margin = pc.subtract(table.column("score_chosen"), table.column("score_rejected")).to_numpy(zero_copy_only=False)
        stats["explicit_margin"] = _summary(margin[~np.isnan(margin)])
    if tokenizer is not None:
        rows = table.slice(0, token_sample)
        stats["tokens_sampled"] = rows.num_rows
        stats["tokens"] = {
            column: _summary(np.array([len(ids) for ids in tokenizer(rows.column(column).to_pylist(),
                                                                      add_special_tokens=False)["input_ids"]]))
            for column in ("chosen", "rejected")
        }
    return stats
