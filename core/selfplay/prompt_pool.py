"""Self-play prompt pools: prompts with their lineage, one JSONL (or JSONL.GZ) row each.

  {"id": str, "prompt": str, "answer"?: str, "task"?: str,
   "parent": str | null, "strategy": "NAME@VERSION" | null, "iteration": int, "root": str}

A superset of the eval-set format (core.experiments.eval_set reads a pool as an eval set, lineage ignored), so
the generation cache and the evaluators take a pool as it is. A seed has no parent and no strategy, iteration 0,
and is its own root; a rewrite names the row it came from, the strategy that made it, the iteration that made
it and the seed its line started from.

The filters decide which rewrites enter the next pool. Every rewrite they refuse comes back with its reason,
so the evolve job can count and record each one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from marginlens.core.atomic import write_bytes
from marginlens.core.errors import MarginLensError

FIELDS = ("id", "prompt", "answer", "task", "parent", "strategy", "iteration", "root")
LINEAGE = ("parent", "strategy", "iteration", "root")
DROP_REASONS = ("truncated", "empty", "too_long", "too_short", "same_as_parent", "duplicate")
_TAG = re.compile(r"^[a-z][a-z0-9_-]*@[0-9]+$")


def _bad(path: Path, line: int, field: str, message: str) -> MarginLensError:
    return MarginLensError(f"prompt pool {path}: line {line}, field '{field}': {message}")


def _text(path: Path, line: int, record: dict[str, Any], name: str, optional: bool = False) -> str | None:
    value = record.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad(path, line, name, "missing or empty (a non-empty string is required)"
                   if value is None or isinstance(value, str) else f"expected a string, got {value!r}")
    return value


def check_row(path: Path, line: int, record: Any) -> dict[str, Any]:
    """One pool row, checked field by field; the error names the file, the line and the field."""
    if not isinstance(record, dict):
        raise _bad(path, line, "id", f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise _bad(path, line, unknown[0], f"not a pool field (known: {', '.join(FIELDS)})")
    row: dict[str, Any] = {"id": _text(path, line, record, "id"), "prompt": _text(path, line, record, "prompt")}
    for name in ("answer", "task"):
        value = record.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise _bad(path, line, name, f"expected a string, got {value!r}")
            row[name] = value
    parent = _text(path, line, record, "parent", optional=True)
    strategy = record.get("strategy")
    if parent is None and strategy is not None:
        raise _bad(path, line, "strategy", "a seed (parent null) has no strategy")
    if parent is not None and (not isinstance(strategy, str) or not _TAG.match(strategy)):
        raise _bad(path, line, "strategy", f"a rewrite names its strategy as NAME@VERSION, got {strategy!r}")
    iteration = record.get("iteration")
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise _bad(path, line, "iteration", f"expected a whole number >= 0, got {iteration!r}")
    if parent is None and iteration != 0:
        raise _bad(path, line, "iteration", f"a seed (parent null) has iteration 0, got {iteration}")
    if parent is not None and iteration < 1:
        raise _bad(path, line, "iteration", "a rewrite is made in iteration 1 or later, got 0")
    root = _text(path, line, record, "root")
    if parent is None and root != row["id"]:
        raise _bad(path, line, "root", f"a seed is its own root: expected {row['id']!r}, got {root!r}")
    row.update(parent=parent, strategy=strategy, iteration=iteration, root=root)
    return row


def _read_records(path: Path) -> list[tuple[int, Any]]:
    from marginlens.core.experiments.eval_set import read_jsonl_text

    text = read_jsonl_text(path, "prompt pool")
    records = []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            records.append((line, json.loads(content)))
        except ValueError as exc:
            raise _bad(path, line, "id", f"not valid JSON: {exc}") from None
    if not records:
        raise MarginLensError(f"prompt pool {path}: no rows")
    return records


def _unique(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    seen: dict[str, int] = {}
    for line, row in rows:
        if row["id"] in seen:
            raise _bad(path, line, "id", f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
        seen[row["id"]] = line
    return [row for _, row in rows]


def load_pool(path: Path) -> list[dict[str, Any]]:
    """The rows of a pool file, in file order, each field checked; duplicate ids refused."""
    path = Path(path)
    return _unique(path, [(line, check_row(path, line, record)) for line, record in _read_records(path)])


def as_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Eval-set rows (core.experiments.eval_set.load_eval_set's) as seed pool rows."""
    return [{**{k: r[k] for k in ("id", "prompt", "answer", "task") if k in r},
             "parent": None, "strategy": None, "iteration": 0, "root": r["id"]} for r in rows]


def load_prompts(path: Path) -> list[dict[str, Any]]:
    """A pool file, or a plain eval set (no row carries a lineage field) read as seeds: iteration 1 starts
    from the seed prompts as they are."""
    path = Path(path)
    records = _read_records(path)
    if any(isinstance(r, dict) and any(name in r for name in LINEAGE) for _, r in records):
        return load_pool(path)
    from marginlens.core.experiments.eval_set import load_eval_set

    return as_seeds(load_eval_set(path))


def write_pool(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows atomically as JSONL (gzip when the name ends in .gz), each checked as load_pool checks it.
    No rows gives an empty file: an iteration whose rewrites were all dropped leaves an empty pool."""
    path = Path(path)
    checked = _unique(path, [(i, check_row(path, i, r)) for i, r in enumerate(rows, start=1)])
    payload = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in checked).encode("utf-8")
    write_bytes(path, gzip.compress(payload, mtime=0) if path.name.lower().endswith(".gz") else payload)


def pool_fingerprint(rows: list[dict[str, Any]]) -> str:
    """A hash of the rows' pool fields in order: equal content, equal fingerprint, whatever the file's bytes."""
    canonical = json.dumps([{k: r.get(k) for k in FIELDS if k in r} for r in rows], sort_keys=True,
                           ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:24]


def normalise(text: str) -> str:
    """The duplicate key: case folded, runs of whitespace collapsed to one space, ends trimmed."""
    return " ".join(text.casefold().split())


def _reason(new: str, orig: str, seen: set[str], max_ratio: float | None) -> str | None:
    if not new.strip():
        return "empty"
    # The length rule in characters, both ways: keep iff len(new) * r > len(orig) and len(orig) * r > len(new).
    if max_ratio is not None and len(new) * max_ratio <= len(orig):
        return "too_short"
    if max_ratio is not None and len(orig) * max_ratio <= len(new):
        return "too_long"
    if normalise(new) == normalise(orig):
        return "same_as_parent"  # before "duplicate": the parent's own text is in `seen` too
    if normalise(new) in seen:
        return "duplicate"
    return None


def filter_rewrites(candidates: list[dict[str, Any]], parents: dict[str, dict[str, Any]], seen: set[str],
                    max_ratio: float | None = 5.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, dropped): each candidate (a pool row whose "prompt" is the cleaned rewrite) in order, kept or
    dropped with a "reason" from DROP_REASONS. `parents`: id -> the row each candidate's "parent" names.
    `seen`: normalised texts a rewrite must not repeat (eval prompts, pool prompts); a kept rewrite joins them
    for the candidates after it. The caller's set is left as it was. `max_ratio` None: no length rule (the
    reference runs without it unless asked, --filter-prompt)."""
    if max_ratio is not None and not max_ratio > 1:
        raise MarginLensError(f"max_ratio must be above 1 (at 1 or below no rewrite could pass), got {max_ratio}")
    taken = set(seen)
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for index, candidate in enumerate(candidates):
        parent = parents.get(candidate.get("parent"))  # type: ignore[arg-type]
        if parent is None:
            raise MarginLensError(f"rewrite {index} (id {candidate.get('id')!r}): its parent "
                                  f"{candidate.get('parent')!r} is not among the parents given")
        new = candidate.get("prompt")
        if not isinstance(new, str):
            raise MarginLensError(f"rewrite {index} (id {candidate.get('id')!r}): field 'prompt' is not a string")
        reason = _reason(new, parent["prompt"], taken, max_ratio)
        if reason is None:
            kept.append(candidate)
            taken.add(normalise(new))
        else:
            dropped.append({**candidate, "reason": reason})
    return kept, dropped


def drop_counts(dropped: list[dict[str, Any]]) -> dict[str, int]:
    """{reason: count} over every reason in DROP_REASONS (zeros included) plus any other reason recorded."""
    counts = Counter(d["reason"] for d in dropped)
    return {**{reason: 0 for reason in DROP_REASONS}, **dict(counts)}
