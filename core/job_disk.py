"""What a job's folder holds on disk: its size, the outputs it made, the leftovers `marginlens jobs clean`
may remove, and a little space held back so that a full disk can still be recorded as the job's outcome.

  jobs/JOB_ID/.space-reserve   RESERVE_BYTES of allocated blocks, made when the worker starts and freed
                               when it records how it ended (core.job_worker)

Leftovers are what no reader needs once the job is finished: a done train job's checkpoints (the final
model is what every reader loads), a done score job's part files (merged into its score table), and in any
job no worker holds, the temporary files of writes that never finished and the space reserve. A failed,
cancelled or killed job keeps its checkpoints and parts: they are what `marginlens jobs resume` continues
from. Outputs (final models, score tables, datasets, exports, results) are never leftovers.

This module sits on the shared ground (it names no job module): kinds are the strings of core.jobs.KINDS,
and their folder layouts the few patterns below.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from marginlens.core.atomic import (
    FREE_SPACE_HINT,
    disk_full_error,
    format_bytes,
    free_space,
    is_disk_full,
    read_json,
    write_json,
)
from marginlens.core.errors import MarginLensError

RESERVE_FILE = ".space-reserve"
RESERVE_BYTES = 64 * 1024  # a status.json, a result.json and the traceback in log.txt, many times over
LOW_SPACE_BYTES = 64 * 1024 * 1024  # below this, a failure that did not say why is probably the full disk

# Leftovers of a done job, by kind, relative to its folder. train: core.training.runs.CHECKPOINTS_DIR under
# the results folder (kept when the run asked for keep_checkpoints, and then still removable here); score:
# core.scoring.score_parts' part files, merged into the score table when the job finished.
DONE_LEFTOVERS: dict[str, tuple[str, ...]] = {
    "train": ("results/checkpoints",),
    "score": ("results/*/part-*.parquet",),
}
# Leftovers of any job no worker holds: core.atomic's temporary folders and files of writes that never
# finished, a train job's half-saved final model (rebuilt from scratch by its next save), the reserve.
IDLE_LEFTOVERS = ("**/.*.tmp", "**/.*.new", "results/.final-partial", RESERVE_FILE)


# ------------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------------
def bytes_on_disk(path: str | os.PathLike) -> int:
    """Allocated bytes of a file or folder tree (what removing it frees; a sparse file counts what it
    uses), not following links; files that vanish meanwhile count 0."""
    path = Path(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    total = info.st_blocks * 512
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def outputs(job_dir: Path, kind: str | None, result: dict[str, Any] | None) -> dict[str, Path]:
    """What the job made that readers use, by label: inside its folder (a train job's final model) or
    elsewhere in the workspace (a score job's tables, an import's dataset). Read from its result.json."""
    result = result if isinstance(result, dict) else {}
    root = job_dir.parent.parent  # the workspace: jobs/JOB_ID
    found: dict[str, Path] = {}
    if kind == "train" and result.get("final_model"):
        found["final model"] = Path(result["final_model"])
    elif kind == "score" and isinstance(result.get("tables"), dict) and result.get("dataset"):
        for role, fingerprint in result["tables"].items():
            found[f"{role} score table"] = root / "scores" / str(result["dataset"]) / str(fingerprint)
    elif kind == "import" and result.get("name"):
        found["dataset"] = root / "datasets" / str(result["name"])
    return {label: path for label, path in found.items() if path.exists()}


def leftovers(job_dir: Path, kind: str | None, done: bool) -> list[Path]:
    """The leftovers of a job no worker holds (`done`: it finished with state done), outermost only."""
    patterns = [*IDLE_LEFTOVERS, *(DONE_LEFTOVERS.get(kind or "", ()) if done else ())]
    found = sorted({p for pattern in patterns for p in job_dir.glob(pattern)})
    return [p for p in found if not any(parent in found for parent in p.parents)]


def disk_use(job_dir: Path, kind: str | None, result: dict[str, Any] | None, done: bool) -> dict[str, Any]:
    """{"job_bytes", "leftover_bytes", "outputs": {label: {"path", "bytes"}}} as of now. An output inside the
    job folder counts in job_bytes too."""
    return {
        "job_bytes": bytes_on_disk(job_dir),
        "leftover_bytes": sum(bytes_on_disk(p) for p in leftovers(job_dir, kind, done)),
        "outputs": {label: {"path": str(path), "bytes": bytes_on_disk(path)}
                    for label, path in outputs(job_dir, kind, result).items()},
    }


def disk_lines(use: dict[str, Any], job_id: str, idle: bool) -> list[str]:
    """What `marginlens jobs show` prints about a job's disk use."""
    lines = [f"disk: {format_bytes(use['job_bytes'])} in the job folder"]
    for label, output in use["outputs"].items():
        lines.append(f"  {label}: {format_bytes(output['bytes'])} at {output['path']}")
    if use["leftover_bytes"] and idle:
        lines.append(f"  leftovers: {format_bytes(use['leftover_bytes'])} "
                     f"(`marginlens jobs clean {job_id}` removes them, never the outputs)")
    return lines


def remove(paths: list[Path]) -> int:
    """Remove files and folders; the bytes this freed."""
    freed = 0
    for path in paths:
        size = bytes_on_disk(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            freed += size
    return freed


# ------------------------------------------------------------------------------------------------
# Recording an outcome on a full disk (core.job_worker)
# ------------------------------------------------------------------------------------------------
def reserve_space(job_dir: Path) -> None:
    """Hold RESERVE_BYTES of real blocks in the job folder; best effort (a disk already full gets none)."""
    path = job_dir / RESERVE_FILE
    try:
        with open(path, "wb") as fh:
            try:
                os.posix_fallocate(fh.fileno(), 0, RESERVE_BYTES)
            except OSError:  # a filesystem without fallocate: zeros allocate blocks too (unless compressed)
                fh.write(b"\0" * RESERVE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError:
        path.unlink(missing_ok=True)


def release_space(job_dir: Path) -> None:
    (job_dir / RESERVE_FILE).unlink(missing_ok=True)


def failure_message(exc: BaseException, near: Path) -> str:
    """The failed status's message: a full disk said as one (the error a library raised names it only in its
    text, if at all), a MarginLensError as it is, anything else with its type."""
    if is_disk_full(exc):
        return str(disk_full_error(exc, near=near, late=True))
    message = str(exc) if isinstance(exc, MarginLensError) else f"{type(exc).__name__}: {exc}"
    space = free_space(near)
    if space is not None and space[0] < LOW_SPACE_BYTES:
        # torch's "file write failed" and the like carry no errno: say what the disk looks like
        message += (f" (only {format_bytes(space[0])} free of {format_bytes(space[1])} on {space[2]}: if this "
                    f"was a write, the disk is full; {FREE_SPACE_HINT})")
    return message


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Write a worker's final status.json even when the disk is full.

    1. The atomic write, as always.
    2. On a full disk: free the job's reserve (core.job_worker has usually done so already) and try again.
    3. Still full (another process took the space, or the worker had no reserve): rewrite the existing
       status.json in place (submit and the worker's start wrote one). Overwriting bytes a file already
       holds, or growing it within the block it already has, needs no new block on a filesystem that
       updates in place (ext4, xfs, tmpfs). The outcome is written compactly, padded with spaces (JSON
       allows trailing whitespace) over whatever the old status held; if it does not fit, the `extra`
       figures go first, then the end of the message. A reader racing this write may see a half-written
       file for an instant: the price of recording the outcome at all, which is better than the worker
       reading as dead with the cause only in its log. The file keeps the name, format and keys JobStatus
       reads, so nothing downstream changes. (A copy-on-write filesystem, btrfs or zfs, may refuse even
       this; then the worker ends with the outcome unrecorded, as before.)
    """
    for _attempt in range(2):
        try:
            write_json(path, status)
            return
        except Exception as exc:  # core.atomic raises DiskFullError, a MarginLensError
            if not is_disk_full(exc):
                raise
        release_space(path.parent)
    _overwrite_in_place(path, status)


def _fit(status: dict[str, Any], room: int, path: Path) -> bytes:
    """The status as compact JSON in at most `room` bytes: the extra figures go first, then the message's end."""
    keys = ("state", "message", "finished", "heartbeat", "pid", "done", "total", "started", "extra")
    fields = {k: status[k] for k in keys if k in status}
    data = json.dumps(fields, separators=(",", ":"), default=str).encode()
    if len(data) > room:
        fields.pop("extra", None)
        data = json.dumps(fields, separators=(",", ":"), default=str).encode()
    if len(data) > room:
        message = str(fields.get("message", "")).encode()
        fields["message"] = message[:max(0, len(message) - (len(data) - room) - 3)].decode(errors="ignore") + "..."
        data = json.dumps(fields, separators=(",", ":"), default=str).encode()
    if len(data) > room:
        raise MarginLensError(f"no space left on device to record the job's outcome in {path}")
    return data


def _overwrite_in_place(path: Path, status: dict[str, Any]) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise MarginLensError(f"no space left on device to record the job's outcome: {path} is missing") from None
    size = info.st_size
    fd = os.open(path, os.O_WRONLY)  # no O_TRUNC, no O_CREAT: the blocks the file holds are reused
    try:
        # First the whole of the blocks the file holds (a 300-byte status.json sits in a 4 kB block: growing
        # within it takes no new block on ext4, xfs or tmpfs), then, if even that is refused, its length.
        for room in dict.fromkeys((max(size, info.st_blocks * 512), size)):
            data = _fit(status, room, path)
            data += b" " * max(0, size - len(data))  # no stale byte of the old status after the new one
            try:
                if os.pwrite(fd, data, 0) == len(data):
                    break
            except OSError as exc:
                if not is_disk_full(exc) or room == size:
                    raise
        else:
            raise MarginLensError(f"no space left on device to record the job's outcome in {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_result(job_dir: Path) -> dict[str, Any] | None:
    try:
        result = read_json(job_dir / "result.json")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return result if isinstance(result, dict) else None
