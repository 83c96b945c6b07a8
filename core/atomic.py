"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from marginlens.core.errors import MarginLensError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only if the block succeeds.

    Works for files and for folders (the caller writes whatever it likes at the yielded path).
    A crash or exception inside the block leaves `target` exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    inner = tmp / target.name
    try:
        yield inner
        if not inner.exists():
            raise FileNotFoundError(f"atomic write of {target} produced nothing")
        if inner.is_file():
            with open(inner, "rb+") as fh:
                os.fsync(fh.fileno())
        if target.is_dir() and not target.is_symlink():
            # A folder cannot be renamed over a non-empty folder: move the old one aside first (readers
            # may see no folder for that instant), and put it back if the new one cannot go in.
            old = tmp / ".old"
            os.rename(target, old)
            try:
                os.rename(inner, target)
            except OSError:
                os.rename(old, target)
                raise
        else:
            os.replace(inner, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def write_with(target: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically create `target` with `writer(tmp_path)` (e.g. a parquet or save_to_disk call)."""
    with atomic_path(target) as tmp:
        writer(tmp)


def create_json(target: str | os.PathLike, obj: Any) -> bool:
    """Atomically create `target` unless it exists; of writers racing, the first wins and the others leave
    its content as it is. True when this call created it."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.time_ns()}.new")
    write_json(tmp, obj)
    try:
        os.link(tmp, target)  # unlike a rename, a link never replaces an existing file
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)
    return True


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


def write_jsonl(target: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically (readers see the old file or the whole new one)."""
    write_bytes(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The objects of a JSONL file this project wrote; a damaged line is named by file and line number."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise MarginLensError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    return rows
