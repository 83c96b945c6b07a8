"""Noisy-pair flags: audits/DATASET/flags.json, pair_id -> {"action", "reason", "time", "judge_model"?}.

A flag says what exports do with a pair the user (usually after an LLM-judge audit) considers
mislabeled: "exclude" drops it, "swap" exchanges chosen and rejected (core.selection.export applies them
unless told not to, and records flags_summary in its manifest). These are not the ingest warnings
in the pair table's `flags` column (core.selection.margins' `flagged`), which only describe how a row was read.
The judge-driven helpers (disagreements, flag_disagreements) are in core.audit.audit_report.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from marginlens.core import actor
from marginlens.core.atomic import read_json, write_json
from marginlens.core.data.pairs import load_texts
from marginlens.core.errors import MarginLensError
from marginlens.core.workspace import Workspace

FLAG_ACTIONS = ("exclude", "swap")


def flags_path(ws: Workspace, dataset: str) -> Path:
    ws.dataset_dir(dataset)  # validates the name
    return ws.audits_dir / dataset / "flags.json"


def load_flags(ws: Workspace, dataset: str) -> dict[str, dict[str, Any]]:
    """pair_id -> {"action": "exclude"|"swap", "reason", "time", "judge_model"?}; empty when none."""
    return read_json(flags_path(ws, dataset), default={}) or {}


@contextmanager
def _flags_locked(ws: Workspace, dataset: str) -> Iterator[dict[str, dict[str, Any]]]:
    """Read-modify-write of flags.json under a lock (the UI and a CLI may flag at the same time)."""
    path = flags_path(ws, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(".flags.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        flags = load_flags(ws, dataset)
        yield flags
        write_json(path, flags)
    finally:
        os.close(fd)


def _require_pairs(ws: Workspace, dataset: str, pair_ids: list[str]) -> None:
    """A typo'd id fails loudly instead of becoming a flag that never matches anything."""
    known = load_texts(ws, dataset).column("pair_id")
    present = pc.is_in(pa.array(pair_ids, type=pa.string()), value_set=known.combine_chunks())
    missing = [pid for pid, ok in zip(pair_ids, present.to_pylist(), strict=True) if not ok]
    if missing:
        raise MarginLensError(f"dataset {dataset!r} has no pair {missing[0]!r} ({len(missing)} of the ids to flag)")


def flag_pairs(
    ws: Workspace,
    dataset: str,
    pair_ids: list[str],
    action: str = "exclude",
    reason: str = "flagged as noisy",
    judge_model: str | None = None,
) -> int:
    """Flag pairs as noisy; returns how many flags were added or changed. Ids must be in the dataset."""
    actor.require_write("flag pairs")
    if action not in FLAG_ACTIONS:
        raise MarginLensError(f"flag action must be one of {', '.join(FLAG_ACTIONS)}, got {action!r}")
    _require_pairs(ws, dataset, list(dict.fromkeys(pair_ids)))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    changed = 0
    with _flags_locked(ws, dataset) as flags:
        for pid in dict.fromkeys(pair_ids):
            new = {"action": action, "reason": reason, "time": stamp,
                   **({"judge_model": judge_model} if judge_model else {})}
            old = flags.get(pid)
            if old is None or (old["action"], old["reason"]) != (action, reason):
                flags[pid] = new
                changed += 1
    return changed


def unflag_pairs(ws: Workspace, dataset: str, pair_ids: list[str] | None = None) -> int:
    """Remove flags (all of them when pair_ids is None); returns how many were removed."""
    actor.require_write("remove flags")
    with _flags_locked(ws, dataset) as flags:
        targets = list(flags) if pair_ids is None else [pid for pid in pair_ids if pid in flags]
        for pid in targets:
            del flags[pid]
    return len(targets)


def flags_summary(ws: Workspace, dataset: str) -> dict[str, Any]:
    """What an export manifest records about the flags it applied."""
    flags = load_flags(ws, dataset)
    return {
        "flags_file": str(flags_path(ws, dataset).relative_to(ws.root)),
        "excluded": sorted(p for p, f in flags.items() if f["action"] == "exclude"),
        "swapped": sorted(p for p, f in flags.items() if f["action"] == "swap"),
    }
