"""A score job's part files: results/FINGERPRINT/part-rankR-SEQ-NS.parquet, written as batches finish,
and their merge into one table in dataset order.

Parts are written atomically, at most every FLUSH_SECONDS, and never overwritten (the nanosecond
timestamp in the name), so a killed worker leaves whole parts only and a resumed one adds to them.
A part damaged after it was written (cut short, overwritten) is moved to the job's quarantine/ folder
when it is read, never deleted, and its pairs count as not scored: the resume scores them again instead
of failing on the same file every time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from marginlens.core.atomic import write_with
from marginlens.core.integrity import DamagedFile, quarantine, read_json_object

FLUSH_SECONDS = float(os.environ.get("MARGINLENS_SCORE_FLUSH_SECONDS", "5"))


def _job_dir(path: Path) -> Path:
    """JOB for a file of JOB/results/FINGERPRINT/."""
    return path.parent.parent.parent


def read_part(path: Path, columns: list[str] | None = None, log: Callable[[str], None] = print) -> Any | None:
    """The part's rows; None when it is gone or damaged (then moved to the job's quarantine/ folder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        _set_aside(path, f"part {path} cannot be read ({exc})", "its pairs are scored again", log)
        return None


def part_problem(path: Path) -> str | None:
    """What is wrong with a part, read whole but left where it is (`marginlens doctor`); None: nothing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        return f"cannot be read as Parquet ({exc})"
    return None


def read_kept_json(path: Path, log: Callable[[str], None] = print, required: Sequence[str] = ()) -> dict[str, Any] | None:
    """One of the job's own JSON files (todo.json, plan-rankR.json); a damaged one is quarantined and read as
    absent, so the job makes it again rather than failing on it at every resume."""
    try:
        return read_json_object(path, required=required)
    except DamagedFile as exc:
        _set_aside(path, f"{path} is damaged ({exc.problem})", "made again", log)
        return None


def _set_aside(path: Path, what: str, then: str, log: Callable[[str], None]) -> None:
    try:
        moved = quarantine(path, _job_dir(path))
    except FileNotFoundError:
        return  # another rank of the job moved it first
    log(f"{what}: moved to {moved}; {then}")


def written_ids(folder: Path, log: Callable[[str], None] = print) -> set[str]:
    """Pair ids already in the folder's parts (all ranks')."""
    ids: set[str] = set()
    for part in sorted(folder.glob("part-*.parquet")):
        table = read_part(part, ["pair_id"], log)
        if table is not None:
            ids.update(table.column("pair_id").to_pylist())
    return ids


class PartWriter:
    """Buffers result rows and writes them as atomic parquet parts (at most every FLUSH_SECONDS)."""

    def __init__(self, folder: Path, rank: int, schema: Any):
        self.folder, self.rank, self.schema = folder, rank, schema
        self.rows: list[dict[str, Any]] = []
        self.last = time.monotonic()
        self.seq = len(list(folder.glob(f"part-rank{rank}-*.parquet")))

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.rows:
            table = pa.Table.from_pylist(self.rows, schema=self.schema)
            # A timestamp in the name: a resumed run never overwrites the parts of an earlier one.
            name = f"part-rank{self.rank}-{self.seq:06d}-{time.time_ns()}.parquet"
            write_with(self.folder / name, lambda p: pq.write_table(table, p))
            self.seq += 1
            self.rows = []
        self.last = time.monotonic()


def unique_by_pair_id(table: Any) -> Any:
    """One row per pair_id, the first (a dataset can hold the same pair twice; both score the same)."""
    import pyarrow.compute as pc

    ids = table.column("pair_id").to_pylist()
    first = {pid: i for i, pid in reversed(list(enumerate(ids)))}
    keep = sorted(first.values())
    return table.take(pc.cast(keep, "int64")) if len(keep) != len(ids) else table


def in_dataset_order(table: Any, pair_ids: Sequence[str]) -> Any:
    """`table`'s rows (one per pair_id) ordered as `pair_ids`, the dataset's order."""
    import pyarrow.compute as pc

    order = {pid: i for i, pid in enumerate(pair_ids)}
    positions = [order[pid] for pid in table.column("pair_id").to_pylist()]
    return table.take(pc.cast(sorted(range(len(positions)), key=positions.__getitem__), "int64"))


def merge_parts(folder: Path, schema: Any, pair_ids: Sequence[str],
                log: Callable[[str], None] = print) -> tuple[Any, int]:
    """All ranks' parts as one table in dataset order, and how many of `pair_ids` it lacks.

    Rows of other pairs are left out: a job started before its to-do list was kept (score_job's
    todo.json) recomputes the list on resume, and pairs it scored that another job has since put in
    the table are no longer on it; the table keeps those."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = [t for t in (read_part(p, log=log) for p in sorted(folder.glob("part-*.parquet"))) if t is not None]
    table = pa.concat_tables([t.cast(schema) for t in parts]) if parts else schema.empty_table()
    table = unique_by_pair_id(table.cast(schema))
    table = table.filter(pc.is_in(table.column("pair_id"), value_set=pa.array(list(pair_ids), pa.string())))
    missing = set(pair_ids) - set(table.column("pair_id").to_pylist())
    if missing:
        return table, len(missing)
    return in_dataset_order(table, pair_ids), 0
