"""Atomic file writes: a reader sees the old file or the new one, never half of either.

A write refused for lack of space becomes a DiskFullError naming the file, the bytes it needed and what
is free there; `is_disk_full` and `disk_full_error` do the same for writes made elsewhere (a parquet
writer, a model save), so every layer says "no space left on device" the same way.
"""

from __future__ import annotations

import errno
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

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How libraries that do not raise OSError put it: safetensors ("No space left on device (os error 28)",
# "StorageFull"), pyarrow and numpy pass the C library's text on.
_DISK_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "storagefull", "quotaexceeded")
FREE_SPACE_HINT = ("free some space (`marginlens jobs clean --all-finished` removes finished jobs' checkpoints "
                   "and merged part files) and try again")


def format_bytes(n: float) -> str:
    """1234567 -> "1.2 MB" (decimal units, as `df -H` and file managers count)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _existing(path: Path) -> Path | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def free_space(path: str | os.PathLike) -> tuple[int, int, Path] | None:
    """(bytes free to this user, filesystem size, its mount point) for the filesystem holding `path`
    (or its nearest existing parent); None when it cannot be asked."""
    found = _existing(Path(path).absolute())
    if found is None:
        return None
    try:
        info = os.statvfs(found)
        mount, device = found, os.stat(found).st_dev
        while mount.parent != mount and os.stat(mount.parent).st_dev == device:
            mount = mount.parent
    except OSError:
        return None
    return info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize, mount


class DiskFullError(MarginLensError):
    """A write refused for lack of space (ENOSPC) or over a quota (EDQUOT): the file, the bytes it needed
    when known, and what is free on its filesystem, measured when the write failed."""

    def __init__(self, path: str | os.PathLike | None = None, needed: int | None = None, *, quota: bool = False,
                 near: str | os.PathLike | None = None, late: bool = False):
        self.path = None if path is None else Path(path)
        self.needed = needed
        self.quota = quota
        what = "disk quota exceeded" if quota else "no space left on device"
        where = f" writing {self.path}" if self.path else f" writing under {near}" if near else ""
        figures = [f"{format_bytes(needed)} needed"] if needed is not None else []
        space = free_space(self.path or near) if (self.path or near) else None
        if space is not None:
            # `late`: measured after the writer removed its unfinished file, so the space it had filled is free
            # again; the write needed more than that
            free, size, mount = space
            figures.append(f"{format_bytes(free)} free{' now' if late else ''} of {format_bytes(size)} on {mount}")
        detail = f" ({'; '.join(figures)})" if figures else ""
        super().__init__(f"{what}{where}{detail}: {FREE_SPACE_HINT}")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a write refused for space or quota."""
    for link in _chain(exc):
        if isinstance(link, DiskFullError) or (isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS):
            return True
        if any(text in str(link).lower() for text in _DISK_FULL_TEXTS):
            return True
    return False


def disk_full_error(exc: BaseException, path: str | os.PathLike | None = None, needed: int | None = None,
                    near: str | os.PathLike | None = None, late: bool = False) -> DiskFullError:
    """The DiskFullError for a disk-full `exc` (is_disk_full): `path` is the file being written, else the
    one the OSError names; `near` stands in when neither is known (say, the workspace a command wrote to).
    `late`: built after the writer gave up (and may have removed what it wrote), not at the failed write."""
    for link in _chain(exc):
        if isinstance(link, DiskFullError):
            return link
    named = next((link.filename for link in _chain(exc) if isinstance(link, OSError) and link.filename), None)
    quota = any((isinstance(link, OSError) and link.errno == errno.EDQUOT) or "quota" in str(link).lower()
                for link in _chain(exc))
    return DiskFullError(path or named, needed, quota=quota, near=near, late=late)


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
def atomic_path(target: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only if the block succeeds.

    Works for files and for folders (the caller writes whatever it likes at the yielded path).
    A crash or exception inside the block leaves `target` exactly as it was; a full disk raises
    DiskFullError for `target` (`needed`: the bytes being written, when the caller knows them).
    """
    target = Path(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        inner = tmp / target.name
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
    except Exception as exc:
        # Measured here, before the partial file below is removed: the free space the write ran into.
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise disk_full_error(exc, target, needed) from exc
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target, needed=len(data)) as tmp:
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
    try:
        write_json(tmp, obj)
    except DiskFullError as exc:
        raise DiskFullError(target, exc.needed, quota=exc.quota) from exc  # the file the user knows
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
