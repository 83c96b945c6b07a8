"""Eval sets: held-out prompts, one JSONL (or JSONL.GZ) row each.

  {"prompt": str, "answer": str (optional; verifiers need it), "task": str (optional), "id": str (optional)}

A row's id defaults to its line number, so results stay keyed the same way however often the file is
read. The fingerprint hashes the parsed rows, not the bytes: a .jsonl and its .jsonl.gz, or the same
rows with other whitespace, are one eval set and share their cached generations.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from marginlens.core.atomic import write_bytes
from marginlens.core.errors import MarginLensError

FIELDS = ("prompt", "answer", "task", "id")
_OPTIONAL_TEXT = ("answer", "task")


def _is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def read_jsonl_text(path: Path, what: str = "eval set") -> str:
    """The text of a JSONL or JSONL.GZ file; errors say `what` it is (an eval set, a prompt pool) and why."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MarginLensError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise MarginLensError(f"{what} {path}: a folder, not a JSONL file") from None
    try:
        if _is_gz(path):
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise MarginLensError(f"{what} {path}: cannot read it as {'gzipped ' if _is_gz(path) else ''}UTF-8 "
                              f"JSONL: {exc}") from None


def _bad(path: Path, line: int, field: str, message: str) -> MarginLensError:
    return MarginLensError(f"eval set {path}: line {line}, field '{field}': {message}")


def _row(path: Path, line: int, record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise _bad(path, line, "prompt", f"expected a JSON object with a 'prompt', got {type(record).__name__}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad(path, line, "prompt", "missing or empty (a non-empty string is required)"
                   if prompt in (None, "") or isinstance(prompt, str) else f"expected a string, got {prompt!r}")
    row: dict[str, Any] = {"prompt": prompt}
    for name in _OPTIONAL_TEXT:
        value = record.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _bad(path, line, name, f"expected a string, got {value!r}")
        row[name] = str(value)
    raw_id = record.get("id")
    if raw_id is None:
        row["id"] = str(line)
    elif isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
        raise _bad(path, line, "id", f"expected a non-empty string or integer, got {raw_id!r}")
    else:
        row["id"] = str(raw_id)
    return row


def load_eval_set(path: Path) -> list[dict[str, Any]]:
    """The rows of an eval set, in file order; ids default to the 1-based line number; duplicate ids are
    refused. Blank lines are skipped (they still count as lines)."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, text in enumerate(read_jsonl_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise _bad(path, line, "prompt", f"not valid JSON: {exc}") from None
        row = _row(path, line, record)
        if row["id"] in seen:
            raise _bad(path, line, "id", f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
        seen[row["id"]] = line
        rows.append(row)
    if not rows:
        raise MarginLensError(f"eval set {path}: no rows")
    return rows


def rows_fingerprint(rows: list[dict[str, Any]]) -> str:
    canonical = json.dumps([{k: r[k] for k in FIELDS if k in r} for r in rows], sort_keys=True,
                           ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:24]


def eval_set_fingerprint(path: Path) -> str:
    """A hash of the parsed rows (prompt, answer, task, id), so equal content gives an equal fingerprint."""
    return rows_fingerprint(load_eval_set(Path(path)))


def write_eval_set(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows atomically as JSONL (gzip when the name ends in .gz); each row is checked as a reader
    would check it, so what is written always loads back."""
    path = Path(path)
    checked = []
    seen: set[str] = set()
    for index, record in enumerate(rows, start=1):
        row = _row(path, index, record)
        if row["id"] in seen:
            raise _bad(path, index, "id", f"duplicate id {row['id']!r}")
        seen.add(row["id"])
        checked.append(row)
    payload = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in checked).encode("utf-8")
    write_bytes(path, gzip.compress(payload, mtime=0) if _is_gz(path) else payload)
