"""The verdict store: every judge answer, kept once per (pair_id, judge model, prompt version, order).

audits/DATASET/verdicts.jsonl, append-only, one JSON record per line, each line written with a single
write() and fsynced before `append` returns. A verdict therefore survives any crash after it arrived,
and a crash in the middle of a write leaves at most one torn last line, which readers skip and the next
writer terminates. Appends take an exclusive flock and re-read what other processes appended, so a
key is written at most once even with several writers; the first record of a key wins.

A re-ask (an off-format answer asked again on purpose, and paid for) is a record with "reask": ROUND, a
round number above the stored one's (absent: 0). It supersedes the stored answer of its key; once per
round, like any record. The answers it replaced stay in the file.

JSONL rather than sqlite: a verdict file is small (two lines per judged pair), readable with any tool,
and easy to check for leaked secrets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginlens.core.keyed_log import KeyedLog
from marginlens.core.workspace import Workspace

VerdictKey = tuple[str, str, str, str]  # (pair_id, judge_model, prompt_version, order)


def verdicts_path(ws: Workspace, dataset: str) -> Path:
    ws.dataset_dir(dataset)  # validates the name before it becomes a path
    return ws.audits_dir / dataset / "verdicts.jsonl"


def key_of(record: dict[str, Any]) -> VerdictKey:
    return (record["pair_id"], record["judge_model"], record["prompt_version"], record["order"])


def round_of(record: dict[str, Any] | None) -> int:
    """Which asking of its key a record answers: 0 the first, then each re-ask's round."""
    return int((record or {}).get("reask") or 0)


def _supersedes(record: dict[str, Any], stored: dict[str, Any] | None) -> bool:
    return stored is None or round_of(record) > round_of(stored)


class VerdictStore(KeyedLog):
    """Append-only, exactly-once verdict records (one per key and round). Safe across threads and processes."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, key_of, _supersedes)

    @classmethod
    def for_dataset(cls, ws: Workspace, dataset: str) -> VerdictStore:
        return cls(verdicts_path(ws, dataset))


@dataclass(frozen=True)
class PairVerdict:
    """Both orders of one pair, combined. `label` is the judge's pair-level answer when decisive."""

    pair_id: str
    ab: dict[str, Any] | None  # record of order AB (chosen shown as A), None if not judged yet
    ba: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return self.ab is not None and self.ba is not None

    @property
    def invalid(self) -> int:
        """Number of judged orders whose answer could not be parsed."""
        return sum(1 for r in (self.ab, self.ba) if r is not None and not r["valid"])

    @property
    def valid(self) -> bool:
        return self.complete and self.invalid == 0

    @property
    def consistent(self) -> bool | None:
        """Whether both orders prefer the same response; None unless both are valid."""
        if not self.valid:
            return None
        return self.ab["prefers"] == self.ba["prefers"]  # type: ignore[index]

    @property
    def label(self) -> str | None:
        """"chosen" or "rejected" when both orders agree on it; None otherwise (undecided)."""
        return self.ab["prefers"] if self.consistent else None  # type: ignore[index]

    @property
    def agrees(self) -> bool | None:
        """Whether the judge agrees with the dataset's label (chosen > rejected); None when undecided."""
        return None if self.label is None else self.label == "chosen"

    def to_row(self) -> dict[str, Any]:
        """A flat row for tables: both answers, rationales and the combined outcome."""

        def part(record: dict[str, Any] | None, prefix: str) -> dict[str, Any]:
            record = record or {}
            return {
                f"{prefix}_answer": record.get("choice"),
                f"{prefix}_prefers": record.get("prefers"),
                f"{prefix}_rationale": record.get("rationale"),
                f"{prefix}_raw": record.get("raw"),
                f"{prefix}_invalid_reason": record.get("invalid_reason"),
            }

        return {
            "pair_id": self.pair_id,
            **part(self.ab, "ab"),
            **part(self.ba, "ba"),
            "complete": self.complete,
            "consistent": self.consistent,
            "judge_label": self.label,
            "agrees": self.agrees,
            "invalid": self.invalid,
        }


def pair_verdicts(records: list[dict[str, Any]], judge_model: str, prompt_version: str) -> dict[str, PairVerdict]:
    """Combine the per-order records of one judge and prompt version into per-pair verdicts."""
    by_pair: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        if record["judge_model"] == judge_model and record["prompt_version"] == prompt_version:
            by_pair.setdefault(record["pair_id"], {})[record["order"]] = record
    return {pid: PairVerdict(pid, orders.get("AB"), orders.get("BA")) for pid, orders in by_pair.items()}
