"""The canonical preference-pair table every MarginLens step reads.

One row per pair. Columns (Arrow):
  pair_id        string   content hash of prompt + chosen + rejected (stable under reordering)
  source_row     int64    0-based record index in the source
  prompt         list<struct<role: string, content: string>>   the prompt as chat messages
  chosen         string   the chosen response (final assistant turn's content)
  rejected       string   the rejected response
  score_chosen   double   explicit score of chosen, null when the source has none
  score_rejected double   explicit score of rejected, null when the source has none
  flags          list<string>  per-row warnings kept with the pair (e.g. "not_argmax")
  source_json    string   the original record as JSON, so exports can reproduce the source layout
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypedDict

import pyarrow as pa
from marginlens.core.workspace import Workspace


class Message(TypedDict):
    role: str
    content: str


MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])

SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("source_row", pa.int64()),
        ("prompt", pa.list_(MESSAGE_TYPE)),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("score_chosen", pa.float64()),
        ("score_rejected", pa.float64()),
        ("flags", pa.list_(pa.string())),
        ("source_json", pa.string()),
    ]
)


def pair_id(prompt: list[Message], chosen: str, rejected: str) -> str:
    """Content hash of a pair: the same pair gets the same id wherever it sits in any file."""
    canonical = json.dumps(
        [[[m["role"], m["content"]] for m in prompt], chosen, rejected],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def prompt_text(prompt: list[Message]) -> str:
    """The last user turn (what a person reads as "the prompt"), for previews and search."""
    for message in reversed(prompt):
        if message["role"] == "user":
            return message["content"]
    return prompt[-1]["content"] if prompt else ""


def make_row(
    source_row: int,
    prompt: list[Message],
    chosen: str,
    rejected: str,
    source_record: dict[str, Any],
    score_chosen: float | None = None,
    score_rejected: float | None = None,
    flags: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "pair_id": pair_id(prompt, chosen, rejected),
        "source_row": source_row,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
        "chosen": chosen,
        "rejected": rejected,
        "score_chosen": score_chosen,
        "score_rejected": score_rejected,
        "flags": list(flags or []),
        "source_json": json.dumps(source_record, ensure_ascii=False, default=str),
    }


def load_texts(ws: Workspace, dataset: str) -> pa.Table:
    """The canonical pair table (memory-mapped Arrow, SCHEMA) of a dataset.

    Read with pyarrow alone: the file is the Arrow stream `datasets` writes, and mapping it directly
    is the same zero-copy table (Workspace.load_pairs(...).data.table) without importing `datasets`
    (seconds, on a page's first render) or its per-call bookkeeping.
    """
    return ws.pairs_table(dataset)  # the guarded read: a damaged file raises DamagedFile naming it
