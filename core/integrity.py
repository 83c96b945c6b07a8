"""Damaged workspace files: the one error that names the file, what is wrong with it and the command that
repairs it; the guarded read of a JSON file; checksums; quarantine (a damaged file is moved aside, never
deleted, so whatever is left in it can still be looked at).

The guarded readers live beside what they read -- `Workspace` (dataset manifests, pairs.arrow),
`scoring.score_tables` (score tables), `jobs.Job` (a job's spec.json, status.json and result.json),
`scoring.score_parts` (a score job's parts) -- and `core.doctor` walks the workspace with them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from marginlens.core.errors import MarginLensError

REPAIR_COMMAND = "marginlens doctor --repair"
QUARANTINE_DIR = "quarantine"


class DamagedFile(MarginLensError):
    """A file MarginLens wrote can no longer be read as it wrote it (cut short, overwritten, deleted)."""

    def __init__(self, path: str | os.PathLike, problem: str, repair: str = REPAIR_COMMAND):
        self.path = Path(path)
        self.problem = problem
        self.repair = repair
        super().__init__(f"{self.path}: damaged: {problem}; repair: {repair}")


def read_json_object(path: str | os.PathLike, repair: str | Callable[[], str] = REPAIR_COMMAND,
                     required: Iterable[str] = ()) -> dict[str, Any] | None:
    """The JSON object in `path`, None when there is no such file; DamagedFile when it is not one (not
    JSON, not an object, or without one of the `required` keys). `repair` may be a callable (a bound
    `Workspace.doctor_command`): it is called only for a damaged file, not on every status read a panel polls."""
    data, problem = _json_object(path, required)
    if problem is not None:
        raise DamagedFile(path, problem, repair() if callable(repair) else repair)
    return data


def _json_object(path: str | os.PathLike, required: Iterable[str]) -> tuple[dict[str, Any] | None, str | None]:
    """(the object, None), (None, None) for no file, or (None, what is wrong)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None, None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    except UnicodeDecodeError:
        return None, "not valid JSON (not UTF-8 text)"
    except IsADirectoryError:
        return None, "a folder where a JSON file belongs"
    if not isinstance(data, dict):
        return None, f"holds a JSON {type(data).__name__} where an object belongs"
    missing = [key for key in required if key not in data]
    if missing:
        return None, f"lacks the field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    return data, None


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str | None, repair: str = REPAIR_COMMAND) -> None:
    """DamagedFile when `path`'s content is not what was recorded at write time (no record: nothing to do)."""
    if expected and sha256_file(path) != expected:
        raise DamagedFile(path, "its content changed since it was written (sha256 differs from the one "
                                "recorded in its manifest)", repair)


def quarantine_stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def quarantine(path: str | os.PathLike, root: str | os.PathLike, stamp: str | None = None) -> Path:
    """Move `path` (a file or a folder under `root`) to root/quarantine/STAMP/<its path under root>, and
    return where it went; an earlier file of the same name and stamp is kept (the new one gets a suffix)."""
    path, root = Path(path), Path(root)
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(path.name)
    target = root / QUARANTINE_DIR / (stamp or quarantine_stamp()) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = target, 1
    while candidate.exists():
        candidate, n = target.with_name(f"{target.name}.{n}"), n + 1
    shutil.move(str(path), str(candidate))
    return candidate
