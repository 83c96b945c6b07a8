"""Score tables: per-pair model outputs for one dataset under one scorer fingerprint.

Stored as scores/DATASET/FINGERPRINT/{scores.parquet, manifest.json}. Two kinds, which readers
(core.selection.margins) join on:
  logprob: pair_id, chosen_logp, chosen_ntok, rejected_logp, rejected_ntok, truncated
           (summed response log-probs and response token counts under a causal LM; every
           implicit-margin form -- SimPO mean, DPO log-ratio -- is derived from these)
  reward:  pair_id, chosen_reward, rejected_reward, truncated   (explicit rewards: a reward model's,
           the dataset's columns, ...)
A scorer's table holds its kind's columns and may add its own (core.scoring.scorers, `output_schema`).
The manifest holds {"fingerprint", "kind", "model", "spec", "rows", "created", "sha256"} (the parquet's
checksum, for `marginlens doctor`; tables written before it have none). The readers here are the only ones
of a table's files: a damaged one raises core.integrity.DamagedFile naming it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from marginlens.core.atomic import write_json, write_with
from marginlens.core.errors import MarginLensError
from marginlens.core.integrity import check_sha256, read_json_object, sha256_file
from marginlens.core.workspace import Workspace

LOGPROB_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("chosen_logp", pa.float64()),
        ("chosen_ntok", pa.int64()),
        ("rejected_logp", pa.float64()),
        ("rejected_ntok", pa.int64()),
        ("truncated", pa.bool_()),
    ]
)
REWARD_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("chosen_reward", pa.float64()),
        ("rejected_reward", pa.float64()),
        ("truncated", pa.bool_()),
    ]
)
KIND_SCHEMAS = {"logprob": LOGPROB_SCHEMA, "reward": REWARD_SCHEMA}


def table_dir(ws: Workspace, dataset: str, fingerprint: str) -> Path:
    return ws.scores_dir / dataset / fingerprint


@contextmanager
def table_lock(ws: Workspace, dataset: str, fingerprint: str) -> Iterator[None]:
    """Held while a table is read, grown and written back: two jobs growing one table (two samples, the
    CLI and the dashboard at once) would otherwise each write their own version, the later without the
    other's pairs. The lock file sits beside the table's folder, which is copied whole (the demo's)."""
    folder = ws.scores_dir / dataset
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f".{fingerprint}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def save_score_table(
    ws: Workspace, dataset: str, fingerprint: str, kind: str, table: pa.Table, model: str, spec: dict[str, Any],
    schema: pa.Schema | None = None,
) -> None:
    """Write the table and then its manifest, each atomically; the manifest marks it complete.
    `schema`: the scorer's columns, a superset of the kind's (default: exactly the kind's)."""
    if kind not in KIND_SCHEMAS:
        raise MarginLensError(f"unknown score table kind {kind!r} (expected one of {sorted(KIND_SCHEMAS)})")
    required = KIND_SCHEMAS[kind]
    schema = schema or required
    wrong = [f.name for f in required if f.name not in schema.names or schema.field(f.name).type != f.type]
    if wrong:
        raise MarginLensError(f"a {kind} score table needs the columns {', '.join(required.names)} with their "
                              f"types; this one lacks or retypes {', '.join(wrong)}")
    table = table.select(schema.names).cast(schema)
    folder = table_dir(ws, dataset, fingerprint)
    digest: list[str] = []
    write_with(folder / "scores.parquet", lambda p: (pq.write_table(table, p), digest.append(sha256_file(p))))
    write_json(
        folder / "manifest.json",
        {
            "fingerprint": fingerprint,
            "kind": kind,
            "model": model,
            "spec": spec,
            "rows": table.num_rows,
            # microseconds: "newest first" must order tables written within the same second
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "sha256": digest[0],
        },
    )


MANIFEST_FIELDS = ("fingerprint", "kind", "created")


def score_manifest(ws: Workspace, dataset: str, fingerprint: str) -> dict[str, Any] | None:
    """The table's manifest; None when the table is not finished; DamagedFile when it cannot be read."""
    manifest = read_json_object(table_dir(ws, dataset, fingerprint) / "manifest.json", ws.doctor_command,
                                required=MANIFEST_FIELDS)
    if manifest is not None and manifest["kind"] not in KIND_SCHEMAS:
        raise ws.damaged(table_dir(ws, dataset, fingerprint) / "manifest.json",
                         f"unknown table kind {manifest['kind']!r}")
    return manifest


def load_score_table(ws: Workspace, dataset: str, fingerprint: str, columns: list[str] | None = None) -> pa.Table:
    return _read(ws, dataset, fingerprint, lambda path: pq.read_table(path, columns=columns))


def score_table_rows(ws: Workspace, dataset: str, fingerprint: str) -> int:
    """The table's row count from its parquet footer: a cheap read that still finds a file cut short."""
    return _read(ws, dataset, fingerprint, lambda path: pq.ParquetFile(path).metadata).num_rows


def _read(ws: Workspace, dataset: str, fingerprint: str, read: Callable[[Path], Any]) -> Any:
    manifest = score_manifest(ws, dataset, fingerprint)
    if manifest is None:
        raise MarginLensError(f"no finished score table {fingerprint!r} for dataset {dataset!r}")
    path = table_dir(ws, dataset, fingerprint) / "scores.parquet"
    try:
        return read(path)
    except FileNotFoundError:
        raise ws.damaged(path, "missing, though the table's manifest.json says it is finished") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ws.damaged(path, f"cannot be read as Parquet ({exc})") from None


def verify_score_table(ws: Workspace, dataset: str, fingerprint: str) -> None:
    """Read the table whole, and compare its rows and checksum with its manifest's (`marginlens doctor`).
    Under the table's lock: a writer replaces the parquet, then the manifest, and between the two they differ."""
    with table_lock(ws, dataset, fingerprint):
        table = load_score_table(ws, dataset, fingerprint)
        manifest = score_manifest(ws, dataset, fingerprint) or {}
        path = table_dir(ws, dataset, fingerprint) / "scores.parquet"
        if isinstance(manifest.get("rows"), int) and table.num_rows != manifest["rows"]:
            raise ws.damaged(path, f"holds {table.num_rows} rows, its manifest.json says {manifest['rows']}")
        check_sha256(path, manifest.get("sha256"), ws.doctor_command())


def list_score_tables(ws: Workspace, dataset: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Manifests of the finished tables for a dataset, newest first (a damaged one raises DamagedFile)."""
    manifests = [score_manifest(ws, dataset, p.parent.name) for p in (ws.scores_dir / dataset).glob("*/manifest.json")]
    manifests = [m for m in manifests if m and (kind is None or m["kind"] == kind)]
    return sorted(manifests, key=lambda m: str(m["created"]), reverse=True)
